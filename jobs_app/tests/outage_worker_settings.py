"""Settings of the Celery worker process that test_rollout_outages.py cuts off from
PostgreSQL: the test suite's settings, the broker and queue the test names, and quick
follow-up passes."""

import os

from homepot.test_settings import *  # noqa: F403

CELERY_BROKER_URL = os.environ["HOMEPOT_TEST_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["HOMEPOT_TEST_QUEUE"]
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2}
HOMEPOT_JOBS_REDISPATCH_SECONDS = 0.05
