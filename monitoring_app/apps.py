from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring_app"
    verbose_name = "Monitoring"
