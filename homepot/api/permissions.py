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
