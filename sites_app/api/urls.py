from sites_app.api.views import SiteViewSet

# (prefix, viewset, basename): homepot.api.urls mounts these at / and at /api/v1/.
resources = [("sites", SiteViewSet, "site")]
