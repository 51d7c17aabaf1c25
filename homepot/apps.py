from django.contrib.admin.apps import AdminConfig


class HomepotAdminConfig(AdminConfig):
    """Replaces Django's default admin site with the HOMEPOT operator console."""

    default_site = "homepot.admin.HomepotAdminSite"
