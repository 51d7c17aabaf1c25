"""WSGI entry point: `gunicorn homepot.wsgi`."""

import gc
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

# What is loaded by now (Django, the apps, the URL conf: about 125,000 objects) lives as long
# as the process: kept out of the garbage collector's full passes, which otherwise walk all of
# it every few thousand requests (tens of ms each: a request's worth of latency spikes, and
# about 5 % of a heartbeat's CPU, measured). Under gunicorn's --preload this runs in the
# master before the fork, so the workers also share those pages instead of copying them
# when the collector would have touched them.
gc.collect()
gc.freeze()
