"""WSGI entry point: `gunicorn homepot.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

application = get_wsgi_application()
