"""Settings of the Celery worker subprocess that test_worker_crash.py starts and kills.

The test suite's settings, plus: the queue and broker the test names, a short broker
visibility timeout (an unacknowledged message comes back after 2 s instead of an hour) and
a slow poll channel, so that the kill lands in the middle of a batch.
"""

import os

from homepot.test_settings import *  # noqa: F403

CELERY_BROKER_URL = os.environ["HOMEPOT_TEST_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["HOMEPOT_TEST_QUEUE"]
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2}
HOMEPOT_JOBS_CHANNELS = {"poll": "jobs_app.tests.worker_settings.SlowChannel"}


class SlowChannel:
    def push(self, batch):
        import time

        time.sleep(0.25)
