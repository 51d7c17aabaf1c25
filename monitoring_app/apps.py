from django.apps import AppConfig
from django.db.models.signals import pre_save


class MonitoringConfig(AppConfig):
    name = "monitoring_app"
    verbose_name = "Monitoring"

    def ready(self):
        from monitoring_app import demo_clock, partitions
        from monitoring_app.models import DeviceStatusChange, HealthCheck

        # Any model: the demo fixture spans every app. Does nothing outside a demo load.
        pre_save.connect(demo_clock.shift_on_load, dispatch_uid="monitoring_demo_clock")
        # After the shift above: a fixture's history rows get their day partitions.
        for model in (HealthCheck, DeviceStatusChange):
            pre_save.connect(
                partitions.history_day_ensure_on_load,
                sender=model,
                dispatch_uid=f"monitoring_day_{model.__name__}",
            )
