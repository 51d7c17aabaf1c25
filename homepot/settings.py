"""HOMEPOT settings, read from the environment (and an optional `.env` beside manage.py).

Every knob is documented in `.env.example`. Secrets have no production default: with
`DEBUG` off, a missing `SECRET_KEY` stops the process at start-up with a clear message.
"""

import contextlib
import os
import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# The real environment wins over the file. HOMEPOT_ENV_FILE points elsewhere ("" reads no
# file), so tests and containers can run without a developer's .env leaking in.
_ENV_FILE = os.environ.get("HOMEPOT_ENV_FILE", str(BASE_DIR / ".env"))
if _ENV_FILE:
    environ.Env.read_env(_ENV_FILE, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

# Only a development process may fall back to a throw-away key; production must set its own.
# An empty value counts as unset, so `SECRET_KEY=` in a .env cannot slip through.
_DEV_SECRET_KEY = "homepot-insecure-development-key-never-use-in-production"  # noqa: S105 (DEBUG only)
SECRET_KEY = env.str("SECRET_KEY", default="") or (_DEV_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. Set the SECRET_KEY environment variable (or add it to .env); "
        "only DEBUG=true runs without one."
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # HOMEPOT first so its admin templates override Django's.
    "accounts",
    "sites_app",
    "devices_app",
    "jobs_app",
    "monitoring_app",
    "legacy_app",
    "homepot.apps.HomepotAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

MIDDLEWARE = [
    # First of all: its latency covers every other middleware, and it sees the final status.
    "homepot.metrics_middleware.HttpMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A view that cannot reach PostgreSQL answers 503 with Retry-After, not 500 (homepot.outage).
    "homepot.outage.DatabaseUnavailableMiddleware",
    # On the embedded SQLite, what needs PostgreSQL answers 501 needs_postgresql (asked before
    # the outage middleware: exceptions go up the list).
    "homepot.sqlite_limits.NeedsPostgreSQLMiddleware",
    # Unknown API paths answer JSON 404s even with DEBUG on (its technical page skips handler404).
    "homepot.views.ApiNotFoundMiddleware",
    # Serves collected static files (the admin's CSS) from gunicorn, with no web server in front.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "homepot.request_context.RequestContextMiddleware",
]

ROOT_URLCONF = "homepot.urls"
WSGI_APPLICATION = "homepot.wsgi.application"
ASGI_APPLICATION = "homepot.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "homepot" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # `homepot` is no app of its own (its AppConfig is the admin's), so its template
            # helpers (status badges, zoned times) are registered by name.
            "libraries": {"homepot": "homepot.templatetags.homepot"},
        },
    },
]

# --- Database ---------------------------------------------------------------------------
# DATABASE_URL selects the database; the older HOMEPOT spelling DATABASE__URL is accepted too.
# With neither, an embedded SQLite file lets a fresh machine run the demo with no server.
SQLITE_PATH = BASE_DIR / "var" / "homepot.sqlite3"
# Lower-case: a module variable, not a setting, so a password in it never shows on a debug page.
_database_url = env.str("DATABASE_URL", default="") or env.str("DATABASE__URL", default="")
# SQLAlchemy-style URLs name a driver ("postgresql+psycopg2://", "postgresql+asyncpg://",
# "sqlite+aiosqlite://"); Django has one backend per engine (psycopg 3 for PostgreSQL), so
# the driver part is dropped. postgres://, postgresql:// and pgsql:// all work as they are.
_database_url = re.sub(r"^(postgres|postgresql|pgsql|sqlite)\+[\w-]+://", r"\1://", _database_url)
if _database_url:
    DATABASES = {"default": env.db_url_config(_database_url)}
else:
    SQLITE_PATH.parent.mkdir(exist_ok=True)
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(SQLITE_PATH)}}
if DATABASES["default"]["ENGINE"] in (
    "django.db.backends.postgresql",
    "django.db.backends.postgresql_psycopg2",
):
    # Django's PostgreSQL backend with a health check that needs no round trip when the
    # connection's socket is quiet (homepot/db/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "homepot.db.postgresql"
    # A server that does not answer (host down, packets dropped) must fail a request within
    # seconds, answered 503, not hold a worker until the kernel gives up (minutes). A
    # `?connect_timeout=` in DATABASE_URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("HOMEPOT_DB_CONNECT_TIMEOUT_SECONDS", default=5)
    )
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The hottest fixed reads (the API token's lookup, the device list's first page) run as
# statements prepared once per connection (homepot/db/prepared.py). Turn off behind a pooler
# in transaction mode (PgBouncer's pool_mode = transaction), where a client's statements may
# reach another server connection each time: docker-compose.yml does.
HOMEPOT_DB_PREPARED_STATEMENTS = env.bool("HOMEPOT_DB_PREPARED_STATEMENTS", default=True)
# Requests that cannot reach PostgreSQL answer 503 with this Retry-After (homepot.outage).
HOMEPOT_OUTAGE_RETRY_AFTER_SECONDS = env.int("HOMEPOT_OUTAGE_RETRY_AFTER_SECONDS", default=5)
DATABASES["default"].setdefault("TEST", {})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# `manage.py loaddata demo` finds fixtures/demo.json here.
FIXTURE_DIRS = [BASE_DIR / "fixtures"]

# --- Users and passwords ----------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    # What a site role allows (view/change devices, jobs, ...); accounts.backends.
    "accounts.backends.SiteRolePermissionBackend",
]
# bcrypt with cost 12 (Django's BCryptSHA256 default), as the HOMEPOT guide specifies.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.BCryptPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    # Raw bcrypt hashes carried over from the older HOMEPOT database; re-hashed on first login.
    "accounts.hashers.LegacyBcryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Time and language ------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
# `collectstatic` copies and gzips files into STATIC_ROOT; WhiteNoise serves them from there.
# Not the manifest variant: it would make every page fail until collectstatic has run.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# WhiteNoise warns at start-up when STATIC_ROOT is missing, as it is in a checkout until
# collectstatic runs (runserver and the tests don't need it); an empty one is harmless.
with contextlib.suppress(OSError):  # read-only deployments have theirs already
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)

# --- Request limits ---------------------------------------------------------------------
# The API refuses bodies above this with 413 (see homepot.api.parsers); Django's own form
# parsing uses the same bound.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("HOMEPOT_API_MAX_BODY_BYTES", default=1024 * 1024)
# A CSV import (API body or upload, admin upload): 100,000 devices are about 10 MB.
HOMEPOT_IMPORT_MAX_BYTES = env.int("HOMEPOT_IMPORT_MAX_BYTES", default=32 * 1024 * 1024)

# --- API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["homepot.api.permissions.ModelPermissions"],
    "DEFAULT_PARSER_CLASSES": ["homepot.api.parsers.BoundedJSONParser"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "homepot.api.filters.StrictSearchFilter",
        "homepot.api.filters.StrictOrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "homepot.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "homepot.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "homepot.api.schema.HomepotAutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HOMEPOT API",
    "DESCRIPTION": "Manage a chain's point-of-sale fleet: sites, devices, jobs, health and audit.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}
HOMEPOT_API_TOKEN_TTL_DAYS = env.int("HOMEPOT_API_TOKEN_TTL_DAYS", default=30)

# --- Accounts: signup and login limits (read by accounts.services and accounts.throttling) ---
HOMEPOT_ACCOUNTS_OPEN_SIGNUP = env.bool("HOMEPOT_ACCOUNTS_OPEN_SIGNUP", default=True)
# "<count>/<window>" (s, min, h, day; "20/15min"); empty turns that limit off.
HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP = env.str("HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP", default="10/min")
HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT = env.str("HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT", default="5/min")
HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_IP = env.str("HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_IP", default="5/min")
HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_ACCOUNT = env.str(
    "HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_ACCOUNT", default="3/min"
)
HOMEPOT_ACCOUNTS_THROTTLE_KEY_PREFIX = env.str(
    "HOMEPOT_ACCOUNTS_THROTTLE_KEY_PREFIX", default="homepot:throttle:"
)
# With Redis unreachable: keep login working unguarded (True) or answer 503 (False).
HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN = env.bool("HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN", default=True)

# --- Celery (workers arrive with the jobs issue; broker configured now) ------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
# kombu's Redis transport with a kept client for publishes (homepot/broker.py); other
# schemes (rediss://, sentinel://) keep kombu's own transport.
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "homepot.broker:Transport"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Where tasks go by default; several deployments (or a test) may share one Redis this way.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
# The worker and beat log each task received/succeeded and each tick sent only when asked.
HOMEPOT_CELERY_LOG_TASKS = env.bool("HOMEPOT_CELERY_LOG_TASKS", default=False)

# --- Beat: one leader across hosts --------------------------------------------------------
# Every application host runs `celery beat`; RedBeat keeps the schedule (with each entry's
# last run) in Redis and lets only the holder of one Redis lock send tasks. The leader renews
# the lock on every tick (at least every HOMEPOT_BEAT_LOCK_SECONDS / 5); a standby tries to
# take it as often. A leader killed outright leaves the lock to expire: another host's beat
# leads at most HOMEPOT_BEAT_LOCK_SECONDS + one tick later (docs/operations.md, "Several
# hosts"). A leader that finds its lock taken (it was cut off longer than that) stops with an
# error instead of sending, and its supervisor restarts it as a standby.
CELERY_BEAT_SCHEDULER = env.str("CELERY_BEAT_SCHEDULER", default="redbeat.RedBeatScheduler")
HOMEPOT_BEAT_LOCK_SECONDS = env.int("HOMEPOT_BEAT_LOCK_SECONDS", default=25)
CELERY_BEAT_MAX_LOOP_INTERVAL = max(1, HOMEPOT_BEAT_LOCK_SECONDS // 5)
CELERY_REDBEAT_REDIS_URL = env.str("HOMEPOT_BEAT_REDIS_URL", default=REDIS_URL)
CELERY_REDBEAT_KEY_PREFIX = env.str("HOMEPOT_BEAT_KEY_PREFIX", default="homepot:beat:")
CELERY_REDBEAT_LOCK_TIMEOUT = HOMEPOT_BEAT_LOCK_SECONDS

# --- Jobs (read by jobs_app: dispatcher, beat tick, agent API) ----------------------------
# Push attempts per delivery before it is failed, and the exponential backoff between them.
HOMEPOT_JOBS_PUSH_MAX_ATTEMPTS = 5
HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 2.0
HOMEPOT_JOBS_PUSH_BACKOFF_MAX_SECONDS = 300.0
# How soon the dispatcher looks again at work held back by the per-site in-flight limit.
HOMEPOT_JOBS_REDISPATCH_SECONDS = 5.0
# A requested dispatch pass that has not started this long after its time is taken for lost
# (its message went with a broker or a worker) and the beat tick requests another.
HOMEPOT_JOBS_DISPATCH_LOST_SECONDS = 30.0
# Beat period of: start due scheduled jobs, time out deliveries, finish rollups.
HOMEPOT_JOBS_TICK_SECONDS = 10.0
# A failure threshold is judged only once this many devices have answered.
HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 10
# The preview's duration estimate: seconds a device takes to apply a job.
HOMEPOT_JOBS_EXPECTED_SECONDS_PER_DEVICE = 30
# Actions whose jobs keep to the sites' maintenance windows unless the job says otherwise
# (docs/jobs.md, "Rollout policy: maintenance windows"): restarting the till software
# interrupts a sale.
HOMEPOT_JOBS_WINDOW_ACTIONS = env.list("HOMEPOT_JOBS_WINDOW_ACTIONS", default=["software_update"])
# While a job waits for windows, its next dispatch pass comes at the earliest opening, or
# after this long at the latest (so an edited schedule is seen).
HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS = env.float("HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS", default=900.0)
# A dispatch pass reads which sites are inside their window at its first batch and again
# after this long (a window closing mid-pass is honoured within it).
HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS = env.float("HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS", default=10.0)
# Most commands one poll of GET /api/v1/agent/commands returns.
HOMEPOT_JOBS_POLL_LIMIT = 50
# The MQTT push channel's broker (Mosquitto), and how long a batch's publishing may wait for
# its PUBACKs (inside the dispatcher's transaction: keep it below the pooler's
# idle_transaction_timeout). Unacknowledged then on a live connection counts as sent.
HOMEPOT_JOBS_MQTT_HOST = env.str("HOMEPOT_JOBS_MQTT_HOST", default="127.0.0.1")
HOMEPOT_JOBS_MQTT_PORT = env.int("HOMEPOT_JOBS_MQTT_PORT", default=1883)
HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS = env.float(
    "HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS", default=10.0
)
# Broker logins (devices_app.mqtt_auth, docs/operations.md "MQTT broker authentication"):
# off by default, for a development broker that lets anyone in. On: each device logs in as
# its device_id with its credential and may use only its own topics (Mosquitto's dynamic
# security plugin, managed as HOMEPOT_MQTT_ADMIN_*); the bridge and the push channel log in
# as HOMEPOT_MQTT_BRIDGE_*. Both passwords have no default.
HOMEPOT_MQTT_AUTH = env.bool("HOMEPOT_MQTT_AUTH", default=False)
HOMEPOT_MQTT_ADMIN_USERNAME = env.str("HOMEPOT_MQTT_ADMIN_USERNAME", default="homepot-admin")
HOMEPOT_MQTT_ADMIN_PASSWORD = env.str("HOMEPOT_MQTT_ADMIN_PASSWORD", default="")
HOMEPOT_MQTT_BRIDGE_USERNAME = env.str("HOMEPOT_MQTT_BRIDGE_USERNAME", default="homepot-bridge")
HOMEPOT_MQTT_BRIDGE_PASSWORD = env.str("HOMEPOT_MQTT_BRIDGE_PASSWORD", default="")
# How long a command to the broker's dynamic security plugin may wait for its answer.
HOMEPOT_MQTT_ADMIN_TIMEOUT_SECONDS = env.float("HOMEPOT_MQTT_ADMIN_TIMEOUT_SECONDS", default=10.0)
if HOMEPOT_MQTT_AUTH and not (HOMEPOT_MQTT_ADMIN_PASSWORD and HOMEPOT_MQTT_BRIDGE_PASSWORD):
    raise ImproperlyConfigured(
        "HOMEPOT_MQTT_AUTH is on: set HOMEPOT_MQTT_ADMIN_PASSWORD and HOMEPOT_MQTT_BRIDGE_PASSWORD."
    )
# Jobs, deliveries and devices each have a `status`: name their OpenAPI enums apart.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "JobStatusEnum": "jobs_app.choices.JobStatus",
        "DeliveryStatusEnum": "jobs_app.choices.DeliveryStatus",
        "DeviceStatusEnum": "devices_app.choices.DeviceStatus",
        "DeliveryOutcomeEnum": [("completed", "Completed"), ("failed", "Failed")],
    }
)

# --- Audit checkpoints (monitoring_app.checkpoints; docs/operations.md) -----------------
# Signed heads of the audit trail, appended to HOMEPOT_AUDIT_CHECKPOINT_DIR (a directory the
# database role cannot write; empty: no periodic checkpoint) every ..._MINUTES by beat.
# The HMAC key is not stored in the database; empty derives one from SECRET_KEY.
HOMEPOT_AUDIT_CHECKPOINT_DIR = env.str("HOMEPOT_AUDIT_CHECKPOINT_DIR", default="")
HOMEPOT_AUDIT_CHECKPOINT_KEY = env.str("HOMEPOT_AUDIT_CHECKPOINT_KEY", default="")
HOMEPOT_AUDIT_CHECKPOINT_MINUTES = env.int("HOMEPOT_AUDIT_CHECKPOINT_MINUTES", default=15)

# --- Devices ------------------------------------------------------------------------------
# How long a web process may answer a heartbeat from its memory of a credential instead of
# asking PostgreSQL: a credential revoked elsewhere still works for at most this long
# (devices_app.credential_cache). Keep it below HOMEPOT_MONITORING_GRACE_SECONDS; 0: off.
HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS = env.float("HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS", default=5.0)
# Heartbeats and health reports read the credential's identity (device, site, type, status)
# from Redis, shared by every host (devices_app.identity_store); revocations and status
# changes reach it on commit. An entry lives this long after the PostgreSQL read that wrote
# it: the bound for a change made while Redis could not be reached. 0: off (the per-process
# memory above is then used; it is also the fallback while Redis is away).
HOMEPOT_DEVICES_IDENTITY_SECONDS = env.int("HOMEPOT_DEVICES_IDENTITY_SECONDS", default=300)
HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX = env.str(
    "HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX", default="homepot:identity:"
)
# Every this many seconds beat rewrites the entries of the devices in use (seen within the
# offline threshold) from fresh PostgreSQL reads, so a steady terminal is not sent to
# PostgreSQL each time its entry expires; the bound above is unchanged (each entry still
# expires that long after the read it carries). Keep it well below the bound; 0: off.
HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS = env.float(
    "HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS", default=120.0
)
# Devices per PostgreSQL read and pipelined Redis round trip of the refresh.
HOMEPOT_DEVICES_IDENTITY_REFRESH_BATCH = env.int("HOMEPOT_DEVICES_IDENTITY_REFRESH_BATCH", default=1000)
# A heartbeat is answered from Redis only if the device was sighted there within the offline
# threshold (expected interval + grace) less this margin; older, it goes to PostgreSQL, as the
# sweep may have marked it offline. The margin covers the clock skew between hosts and a
# request's time from reading the clock to noting the heartbeat (devices_app.identity_store).
HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS = env.float("HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS", default=30.0)

# --- Monitoring (read by monitoring_app: ingest, sweep, alerts, retention) ---------------
# A device is online while seen within its expected report interval plus the grace period.
HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = env.int(
    "HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS", default=60
)
HOMEPOT_MONITORING_GRACE_SECONDS = env.int("HOMEPOT_MONITORING_GRACE_SECONDS", default=120)
# Beat period of the sweep (offline marking) and the alert evaluation.
HOMEPOT_MONITORING_SWEEP_SECONDS = env.float("HOMEPOT_MONITORING_SWEEP_SECONDS", default=30.0)
# A heartbeat rewrites the device row only when something changed or last_seen is older.
HOMEPOT_MONITORING_TOUCH_SECONDS = env.int("HOMEPOT_MONITORING_TOUCH_SECONDS", default=30)
# Heartbeats of online devices go to a Redis hash and reach the rows in one UPDATE this
# often (and before every sweep); off, or with Redis down, each is written at once.
HOMEPOT_MONITORING_BUFFER_HEARTBEATS = env.bool("HOMEPOT_MONITORING_BUFFER_HEARTBEATS", default=True)
HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS = env.float("HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS", default=10.0)
HOMEPOT_MONITORING_SEEN_KEY_PREFIX = env.str("HOMEPOT_MONITORING_SEEN_KEY_PREFIX", default="homepot:seen:")
# Health reports of devices that keep their status go to a Redis Stream (acknowledged once
# Redis holds them) and reach PostgreSQL by the drain this often; off, or with Redis down,
# each is written at once. Point HEALTH_REDIS_URL at a Redis with appendonly yes and
# appendfsync always for the guarantee of docs/operations.md ("Health report buffer").
HOMEPOT_MONITORING_BUFFER_HEALTH = env.bool("HOMEPOT_MONITORING_BUFFER_HEALTH", default=True)
HOMEPOT_MONITORING_HEALTH_REDIS_URL = env.str("HOMEPOT_MONITORING_HEALTH_REDIS_URL", default=REDIS_URL)
# "check": buffer only while that Redis reports appendonly yes + appendfsync always (asked once a
# minute); "assume": the operator vouches for its durability where CONFIG is refused.
HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY = env.str(
    "HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY", default="check"
)
if HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY not in ("check", "assume"):
    raise ImproperlyConfigured("HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY must be check or assume")
HOMEPOT_MONITORING_HEALTH_KEY_PREFIX = env.str(
    "HOMEPOT_MONITORING_HEALTH_KEY_PREFIX", default="homepot:health:"
)
HOMEPOT_MONITORING_HEALTH_DRAIN_SECONDS = env.float("HOMEPOT_MONITORING_HEALTH_DRAIN_SECONDS", default=2.0)
HOMEPOT_MONITORING_HEALTH_DRAIN_MAX_SECONDS = env.float(
    "HOMEPOT_MONITORING_HEALTH_DRAIN_MAX_SECONDS", default=50.0
)
# Above this many waiting entries (about 10 minutes of 100,000 terminals), reports are written
# directly until the drain catches up: a stopped drain cannot fill Redis's memory.
HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES = env.int(
    "HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES", default=1_000_000
)
# The devices-by-status gauge of /metrics (a GROUP BY over every device: about a second at
# 1,000,000 devices on a busy 2-core machine) is counted by at most one tick this often
# (docs/operations.md, "Metrics"); 0: every tick.
HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS = env.int("HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS", default=300)
# Device clocks: a report stamped further ahead than this is refused (400), one older than
# the max age too (it would be pruned anyway).
HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS = env.int("HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS", default=300)
HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS = env.int("HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS", default=72)
HOMEPOT_MONITORING_BATCH_MAX_REPORTS = env.int("HOMEPOT_MONITORING_BATCH_MAX_REPORTS", default=500)
HOMEPOT_MONITORING_METRICS_MAX_BYTES = env.int("HOMEPOT_MONITORING_METRICS_MAX_BYTES", default=4096)
# Alerts open after a device has been offline / unhealthy this long.
HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = env.int("HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS", default=300)
HOMEPOT_MONITORING_ALERT_UNHEALTHY_SECONDS = env.int(
    "HOMEPOT_MONITORING_ALERT_UNHEALTHY_SECONDS", default=600
)
# A device in `error` (set by an operator or integration) opens an alert after this long, so
# a status corrected at once pages nobody.
HOMEPOT_MONITORING_ALERT_ERROR_SECONDS = env.int("HOMEPOT_MONITORING_ALERT_ERROR_SECONDS", default=60)
# One site alert instead of one per terminal when this fraction of a site's monitored
# devices (at least the minimum) is offline.
HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION = env.float("HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION", default=0.6)
HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES = env.int("HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES", default=2)
# Optional: alerts are also POSTed as JSON to this URL.
HOMEPOT_MONITORING_WEBHOOK_URL = env.str("HOMEPOT_MONITORING_WEBHOOK_URL", default="")
HOMEPOT_MONITORING_WEBHOOK_TIMEOUT_SECONDS = env.float(
    "HOMEPOT_MONITORING_WEBHOOK_TIMEOUT_SECONDS", default=5.0
)
# Outgoing mail (alert notifications). A timeout, so a silent mail server cannot hold a
# worker: a send that times out is retried like any failed one.
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="homepot@localhost")
# Alert notifications (email, webhook) are delivered at least once: a failed send is tried
# again after an exponential backoff with jitter (base doubling per attempt, capped), at most
# MAX_ATTEMPTS times, then the notification is `failed` (visible in the admin, audited).
HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS = env.int("HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS", default=8)
HOMEPOT_MONITORING_NOTIFY_BACKOFF_SECONDS = env.float(
    "HOMEPOT_MONITORING_NOTIFY_BACKOFF_SECONDS", default=30.0
)
HOMEPOT_MONITORING_NOTIFY_BACKOFF_MAX_SECONDS = env.float(
    "HOMEPOT_MONITORING_NOTIFY_BACKOFF_MAX_SECONDS", default=3600.0
)
# A sender's claim on a notification; after it lapses (the worker died mid-send) another
# sender takes it. Longer than the delivery task's hard time limit.
HOMEPOT_MONITORING_NOTIFY_LEASE_SECONDS = env.int("HOMEPOT_MONITORING_NOTIFY_LEASE_SECONDS", default=600)
# Beat period of the delivery task (it is also enqueued as soon as alerts open), and the
# most notifications one run sends.
HOMEPOT_MONITORING_NOTIFY_SECONDS = env.float("HOMEPOT_MONITORING_NOTIFY_SECONDS", default=15.0)
HOMEPOT_MONITORING_NOTIFY_BATCH = env.int("HOMEPOT_MONITORING_NOTIFY_BATCH", default=100)
# Health history older than this is pruned, in batches of the given size.
HOMEPOT_MONITORING_RETENTION_DAYS = env.int("HOMEPOT_MONITORING_RETENTION_DAYS", default=30)
HOMEPOT_MONITORING_PRUNE_BATCH = env.int("HOMEPOT_MONITORING_PRUNE_BATCH", default=5000)
# History partitions (PostgreSQL; monitoring_app.partitions): day partitions created this
# many days ahead by the hourly maintenance (a scheduler down for longer sends rows to the
# DEFAULT partition, moved out on its next run); how long partition DDL waits for its lock
# before leaving the work to the next run; and up to how many rows migration 0016 converts a
# table itself (bigger tables: `manage.py partition_history`, online).
HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD = env.int("HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD", default=7)
HOMEPOT_MONITORING_PARTITION_LOCK_TIMEOUT_MS = env.int(
    "HOMEPOT_MONITORING_PARTITION_LOCK_TIMEOUT_MS", default=2000
)
HOMEPOT_MONITORING_PARTITION_MIGRATE_MAX_ROWS = env.int(
    "HOMEPOT_MONITORING_PARTITION_MIGRATE_MAX_ROWS", default=1_000_000
)
# Retention's DETACH (and later DROP) of an old day waits at most this long for each lock it
# needs, on the history table and on the device table (every ingest write queues behind it
# while it waits), and is tried this many times (pauses of 0.05 s, 0.1 s, ... up to 0.5 s
# between) before the day is left for the next run.
HOMEPOT_MONITORING_RETENTION_LOCK_TIMEOUT_MS = env.int(
    "HOMEPOT_MONITORING_RETENTION_LOCK_TIMEOUT_MS", default=200
)
HOMEPOT_MONITORING_RETENTION_ATTEMPTS = env.int("HOMEPOT_MONITORING_RETENTION_ATTEMPTS", default=20)
# DETACH ... CONCURRENTLY's waits (the parent's SHARE UPDATE EXCLUSIVE, then the transactions
# already using the history): nobody queues behind them, so they may be long; a detach that
# times out in its second wait is left pending and finished by the next run.
HOMEPOT_MONITORING_RETENTION_CONCURRENT_TIMEOUT_MS = env.int(
    "HOMEPOT_MONITORING_RETENTION_CONCURRENT_TIMEOUT_MS", default=60_000
)
# Device health and site health each have a `status`: name their OpenAPI enums apart.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "HealthStatusEnum": "monitoring_app.choices.HealthStatus",
        "SiteHealthStatusEnum": "monitoring_app.choices.SiteHealthStatus",
    }
)

# --- Security headers for deployments behind TLS -----------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Opt-in, because they only make sense once TLS is in front: redirect plain HTTP to HTTPS,
# tell browsers to insist on HTTPS, and trust the proxy's X-Forwarded-Proto header (only
# behind a proxy that sets it, or clients could claim HTTPS).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# The liveness probe is called over plain HTTP from inside the deployment (docker-compose.yml).
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$", r"^metrics/?$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("SECURE_PROXY_SSL_HEADER", default=False) else None
)

# --- Metrics and readiness (homepot.metrics; docs/operations.md "Metrics") -----------------
# GET /metrics answers only a request carrying `Authorization: Bearer <this token>`; empty
# (the default) turns the endpoint off: it answers 404 like any unknown path.
HOMEPOT_METRICS_TOKEN = env.str("HOMEPOT_METRICS_TOKEN", default="")
# The directory tree /metrics adds up (multiprocess mode). Each process kind writes to its own
# PROMETHEUS_MULTIPROC_DIR inside it; by default the tree is PROMETHEUS_MULTIPROC_DIR itself.
HOMEPOT_METRICS_MULTIPROC_DIR = env.str(
    "HOMEPOT_METRICS_MULTIPROC_DIR", default=os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
)
# How long /readyz waits for each of PostgreSQL, Redis and the MQTT broker.
HOMEPOT_READYZ_TIMEOUT_SECONDS = env.float("HOMEPOT_READYZ_TIMEOUT_SECONDS", default=2.0)
# Logs as one JSON object a line (with the request id) instead of plain text.
HOMEPOT_LOG_JSON = env.bool("HOMEPOT_LOG_JSON", default=False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "homepot.logging_filters.JsonFormatter"},
    },
    "filters": {"quiet_agent": {"()": "homepot.logging_filters.QuietAgentRequests"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if HOMEPOT_LOG_JSON else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # runserver's access log, without a line per terminal poll or heartbeat.
        "django.server": {"handlers": ["console"], "filters": ["quiet_agent"], "propagate": False},
    },
}
