"""Permissions that come from a user's site roles.

A membership's role decides which kinds of object a user may view or change (this backend);
which rows those are is decided by the scoping rule (`for_user`). Together they answer every
"may this user do this?" in the admin and the API, with no groups to keep in sync.
"""

from django.contrib.auth.backends import BaseBackend

from accounts.choices import MembershipRole

_READ = {
    "sites_app.view_site",
    "devices_app.view_device",
    "jobs_app.view_job",
    "monitoring_app.view_healthcheck",
    "monitoring_app.view_alert",
    "monitoring_app.view_notification",
    "monitoring_app.view_auditlog",
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    MembershipRole.VIEWER: frozenset(_READ),
    # Site managers run their stores' devices and jobs; sites, users and memberships stay
    # with the admins.
    MembershipRole.MANAGER: frozenset(
        _READ
        | {
            "devices_app.add_device",
            "devices_app.change_device",
            "devices_app.delete_device",
            "jobs_app.add_job",
            "jobs_app.change_job",
        }
    ),
}


class SiteRolePermissionBackend(BaseBackend):
    """Grants the permissions of every role the user holds on any site (cached per request)."""

    def get_all_permissions(self, user_obj, obj=None):
        if obj is not None or not user_obj.is_active or user_obj.is_anonymous:
            return set()
        if not hasattr(user_obj, "_site_role_perm_cache"):
            roles = set(user_obj.memberships.values_list("role", flat=True).distinct())
            user_obj._site_role_perm_cache = set().union(*(ROLE_PERMISSIONS[role] for role in roles))
        return user_obj._site_role_perm_cache

    def has_perm(self, user_obj, perm, obj=None):
        return perm in self.get_all_permissions(user_obj, obj)

    def has_module_perms(self, user_obj, app_label):
        return any(perm.startswith(f"{app_label}.") for perm in self.get_all_permissions(user_obj))
