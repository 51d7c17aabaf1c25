from django.apps import AppConfig
from django.db.models.signals import pre_save


class MonitoringConfig(AppConfig):
    name = "monitoring_app"
    verbose_name = "Monitoring"

    def ready(self):
        from monitoring_app import demo_clock

        # Any model: the demo fixture spans every app. Does nothing outside a demo load.
        pre_save.connect(demo_clock.shift_on_load, dispatch_uid="monitoring_demo_clock")
