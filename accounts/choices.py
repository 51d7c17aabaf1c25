from django.db import models


class MembershipRole(models.TextChoices):
    """What a non-admin user may do on a site they are a member of (admins see everything)."""

    MANAGER = "manager", "Site manager"
    VIEWER = "viewer", "Viewer"


# Roles allowed per kind of action; the one scoping rule (accounts.scoping) reads this.
ROLES_FOR_ACTION = {
    "view": (MembershipRole.MANAGER, MembershipRole.VIEWER),
    "change": (MembershipRole.MANAGER,),
}
