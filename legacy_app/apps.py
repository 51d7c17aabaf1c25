from django.apps import AppConfig


class LegacyConfig(AppConfig):
    name = "legacy_app"
    verbose_name = "Import from the older HOMEPOT"
