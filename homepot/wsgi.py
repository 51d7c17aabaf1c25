"""WSGI entry point: `gunicorn homepot.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

application = get_wsgi_application()

# Heartbeats and health reports (every terminal, every minute) are answered in front of
# Django's handler (monitoring_app.api.heartbeat_fast).
from monitoring_app.api.heartbeat_fast import HeartbeatFastPath  # noqa: E402 (needs django.setup)

application = HeartbeatFastPath(application)
