"""WSGI entry point: `gunicorn homepot.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

application = get_wsgi_application()

# Heartbeats and health reports (every terminal, every minute) are answered in front of
# Django's handler (monitoring_app.api.heartbeat_fast), and so is a plain page of the device
# list as integrations poll it (devices_app.api.list_fast). The heartbeat's wrapper is the
# outer one: heartbeats, the most frequent requests, are tried first.
from devices_app.api.list_fast import DeviceListFastPath  # noqa: E402 (needs django.setup)
from monitoring_app.api.heartbeat_fast import HeartbeatFastPath  # noqa: E402 (needs django.setup)

application = HeartbeatFastPath(DeviceListFastPath(application))
