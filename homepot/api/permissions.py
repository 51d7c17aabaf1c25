from rest_framework import permissions


class ModelPermissions(permissions.DjangoModelPermissions):
    """Authenticated, and holding the model permission for the method (GET needs `view`).

    Which rows a user reaches is decided by the scoping rule (`for_user`) in the view's
    queryset; this class decides which verbs they may use at all.
    """

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }

    def _queryset(self, view):
        # DRF builds the view's whole queryset (a selector with its joins and annotations)
        # only to read its model; a view naming `permission_model` spares that on its hot
        # requests. homepot/tests/test_api_permissions_model.py holds the two equal.
        model = getattr(view, "permission_model", None)
        if model is not None:
            return model._default_manager.none()
        return super()._queryset(view)


class IsAuthenticatedSiteReader(permissions.BasePermission):
    """Holds `sites_app.view_site` (every role does), whatever the method: for the few site
    sub-resources a site's manager may write (the service checks the site's change scope)."""

    def has_permission(self, request, view):
        return bool(
            request.user and request.user.is_authenticated and request.user.has_perm("sites_app.view_site")
        )
