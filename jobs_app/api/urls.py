from jobs_app.api.views import JobViewSet

# (prefix, viewset, basename): homepot.api.urls mounts these at / and at /api/v1/.
resources = [("jobs", JobViewSet, "job")]
