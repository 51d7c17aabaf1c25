"""This app's periodic tasks, merged into Celery beat's schedule by homepot/celery.py."""

BEAT_SCHEDULE: dict = {}
