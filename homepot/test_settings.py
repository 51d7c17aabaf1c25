"""Settings for the test suite: the real settings, on PostgreSQL, with a fast password hasher.

The suite runs on PostgreSQL (the production engine). DATABASE_URL may point elsewhere;
by default it is the local server with trust authentication that dev and CI machines run.
"""

import os

# A developer's .env (which scripts/run.sh writes: DEBUG=true, the demo database) must not
# leak into the tests; subprocesses the tests start inherit this too.
os.environ["HOMEPOT_ENV_FILE"] = ""
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/homepot")
os.environ.setdefault("SECRET_KEY", "homepot-test-suite-key")

from homepot.settings import *  # noqa: E402,F403

# bcrypt at cost 12 takes ~0.25 s per hash; tests that are about hashing opt back in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *PASSWORD_HASHERS]  # noqa: F405
CELERY_TASK_ALWAYS_EAGER = False
# The tests read the devices-by-status gauge right after each tick.
HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS = 0
