"""The one scoping rule: what a user may see (`view`) or change (`change`).

Admins (superusers) reach everything. Everyone else reaches the sites they hold a
membership on, with the role the action needs, and whatever hangs off those sites.
API querysets, admin querysets, form choices, list filters, autocomplete and tasks all
call `for_user`, so the rule lives here and nowhere else.
"""

from django.db import models

from accounts.choices import ROLES_FOR_ACTION


def scoped_site_ids(user, action: str = "view"):
    """A subquery of the site ids `user` may act on; `None` means "every site" (admins)."""
    from accounts.models import SiteMembership

    if user is None or not user.is_authenticated or not user.is_active or getattr(user, "is_device", False):
        # Devices act only on themselves, through the agent endpoints, never through scopes.
        return SiteMembership.objects.none().values("site_id")
    if user.is_superuser:
        return None
    try:
        roles = ROLES_FOR_ACTION[action]
    except KeyError:
        raise ValueError(f"Unknown scoping action {action!r}") from None
    return SiteMembership.objects.filter(user=user, role__in=roles).values("site_id")


class ScopedQuerySet(models.QuerySet):
    """A queryset whose rows belong to a site; subclasses name the path to the site's pk."""

    scope_path = "site"

    def for_user(self, user, action: str = "view"):
        site_ids = scoped_site_ids(user, action)
        if site_ids is None:
            return self
        return self.filter(**{f"{self.scope_path}__in": site_ids})


def require_site_access(user, site, action: str = "change") -> None:
    """Refuse (PermissionDenied) unless `user` may `action` on `site`; NotFound if the site
    was deleted meanwhile. `user=None` is the system itself (management commands, tasks) and
    is always allowed."""
    from django.core.exceptions import PermissionDenied

    from sites_app.models import Site

    if user is None:
        return
    if not Site.objects.for_user(user, action).filter(pk=site.pk).exists():
        if not Site.objects.filter(pk=site.pk).exists():
            # Deleted by a concurrent request after the caller read it: the loser of that
            # race is told the object is gone (404), not that it lacks rights (403).
            from homepot.errors import NotFound

            raise NotFound(f"Site {site.site_id} no longer exists; it was removed by another request.")
        raise PermissionDenied(f"You may not {action} site {site.site_id}.")


def require_admin(user, what: str) -> None:
    """Refuse (PermissionDenied) unless `user` is an admin; `user=None` is the system."""
    from django.core.exceptions import PermissionDenied

    if user is not None and not user.is_superuser:
        raise PermissionDenied(f"Only administrators may {what}.")
