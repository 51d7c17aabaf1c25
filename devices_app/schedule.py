"""This app's periodic tasks, merged into Celery beat's schedule by homepot/celery.py."""

from django.conf import settings

BEAT_SCHEDULE: dict = {}

# The identities of the devices in use, rewritten from PostgreSQL before they expire
# (devices_app.identity_store, "The refresh"). A run that could not start within its period
# is dropped: the next one does the same work.
if settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS > 0 and settings.HOMEPOT_DEVICES_IDENTITY_SECONDS > 0:
    BEAT_SCHEDULE["devices-refresh-identities"] = {
        "task": "devices_app.tasks.refresh_identities",
        "schedule": settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS,
        "options": {"expires": settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS},
    }
