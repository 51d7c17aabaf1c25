"""Settings read from the environment, checked in fresh processes with a controlled environment.

Each case starts `python -c` with the production settings (`homepot.settings`), no `.env`
(HOMEPOT_ENV_FILE is empty) and none of the variables under test inherited from the shell that
runs the suite, so what a case sees is exactly what it set.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from django.conf import settings
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings

ROOT = Path(settings.BASE_DIR)

# Variables that would leak the test run's own configuration into the child process.
INHERITED_AWAY = {
    "DATABASE_URL",
    "DATABASE__URL",
    "SECRET_KEY",
    "DEBUG",
    "DJANGO_SETTINGS_MODULE",
    "HOMEPOT_ENV_FILE",
    "CONN_MAX_AGE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_PROXY_SSL_HEADER",
    "STATIC_ROOT",
}

PRINT_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "ENGINE": db["ENGINE"], "NAME": str(db["NAME"]), "HOST": db["HOST"], "PORT": db["PORT"],
    "USER": db["USER"], "PASSWORD": db["PASSWORD"],
    "CONN_MAX_AGE": db["CONN_MAX_AGE"], "CONN_HEALTH_CHECKS": db["CONN_HEALTH_CHECKS"],
    "DEBUG": settings.DEBUG, "SECRET_KEY": settings.SECRET_KEY,
    "TIME_ZONE": settings.TIME_ZONE, "USE_TZ": settings.USE_TZ,
    "SECURE_SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
    "SECURE_HSTS_SECONDS": settings.SECURE_HSTS_SECONDS,
    "SECURE_PROXY_SSL_HEADER": settings.SECURE_PROXY_SSL_HEADER,
    "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE,
}))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter at the project root with only the given settings env."""
    child_env = {key: value for key, value in os.environ.items() if key not in INHERITED_AWAY}
    child_env.update({"DJANGO_SETTINGS_MODULE": "homepot.settings", "HOMEPOT_ENV_FILE": ""})
    child_env.update(env)
    return subprocess.run(  # noqa: S603 (our own interpreter and code)
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def settings_with(**env: str) -> dict:
    result = run_python(PRINT_SETTINGS, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- Database selection ---------------------------------------------------------------------


def test_without_a_database_url_the_demo_runs_on_the_embedded_sqlite_file():
    loaded = settings_with(SECRET_KEY="k")
    assert loaded["ENGINE"] == "django.db.backends.sqlite3"
    assert Path(loaded["NAME"]) == ROOT / "var" / "homepot.sqlite3"


def test_the_guides_database__url_spelling_selects_postgresql():
    loaded = settings_with(
        SECRET_KEY="k",
        DATABASE__URL="postgresql://homepot_user:homepot_dev_password@localhost:5432/homepot_db",
    )
    assert loaded["ENGINE"] == "homepot.db.postgresql"
    assert (loaded["NAME"], loaded["USER"], loaded["PASSWORD"]) == (
        "homepot_db",
        "homepot_user",
        "homepot_dev_password",
    )
    assert (loaded["HOST"], loaded["PORT"]) == ("localhost", 5432)


def test_database_url_wins_over_the_alias():
    loaded = settings_with(
        SECRET_KEY="k",
        DATABASE_URL="postgres://primary@db1:5432/chosen",
        DATABASE__URL="postgres://other@db2:5432/ignored",
    )
    assert (loaded["NAME"], loaded["HOST"]) == ("chosen", "db1")


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@h:5432/d",
        "postgresql://u:p@h:5432/d",
        "pgsql://u:p@h:5432/d",
        # SQLAlchemy spellings from the older HOMEPOT configuration name a driver.
        "postgresql+psycopg2://u:p@h:5432/d",
        "postgresql+asyncpg://u:p@h:5432/d",
    ],
)
def test_every_postgresql_url_spelling_means_the_psycopg3_backend(url):
    loaded = settings_with(SECRET_KEY="k", DATABASE_URL=url)
    assert loaded["ENGINE"] == "homepot.db.postgresql"
    assert (loaded["NAME"], loaded["USER"], loaded["PASSWORD"], loaded["HOST"]) == ("d", "u", "p", "h")


@pytest.mark.django_db
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_both_url_schemes_really_connect_with_psycopg3(scheme):
    """Against the suite's own PostgreSQL server and test database."""
    db = connection.settings_dict
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    url = f"{scheme}://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    result = run_python(
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        "    cursor.execute('SELECT 1')\n"
        "    print(connection.vendor, type(connection.connection).__module__, cursor.fetchone()[0])\n",
        SECRET_KEY="k",
        DATABASE_URL=url,
    )
    assert result.returncode == 0, result.stderr
    vendor, driver_module, answer = result.stdout.split()
    assert (vendor, answer) == ("postgresql", "1")
    assert driver_module.split(".")[0] == "psycopg"  # psycopg 3, not psycopg2


def test_connections_persist_with_health_checks_and_time_is_utc():
    loaded = settings_with(SECRET_KEY="k", DATABASE_URL="postgres://u@h/d")
    assert loaded["CONN_MAX_AGE"] == 60
    assert loaded["CONN_HEALTH_CHECKS"] is True
    assert (loaded["TIME_ZONE"], loaded["USE_TZ"]) == ("UTC", True)
    assert settings_with(SECRET_KEY="k", CONN_MAX_AGE="0")["CONN_MAX_AGE"] == 0


# --- SECRET_KEY and DEBUG -------------------------------------------------------------------


@pytest.mark.parametrize("secret_env", [{}, {"SECRET_KEY": ""}], ids=["unset", "empty"])
def test_without_secret_key_production_refuses_to_start_with_a_clear_message(secret_env):
    result = run_python("import django; django.setup()", **secret_env)
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set." in result.stderr


def test_debug_off_is_the_default():
    assert settings_with(SECRET_KEY="k")["DEBUG"] is False


def test_debug_runs_without_a_secret_key_on_a_development_key():
    loaded = settings_with(DEBUG="true")
    assert loaded["DEBUG"] is True
    assert "insecure-development" in loaded["SECRET_KEY"]
    assert loaded["SESSION_COOKIE_SECURE"] is False


def test_a_given_secret_key_is_used_as_is():
    assert settings_with(SECRET_KEY="s3cret-from-the-vault")["SECRET_KEY"] == "s3cret-from-the-vault"


# --- .env files -------------------------------------------------------------------------------


def test_an_env_file_is_read_and_the_real_environment_wins_over_it(tmp_path):
    env_file = tmp_path / "homepot.env"
    env_file.write_text("SECRET_KEY=from-file\nDATABASE_URL=postgres://u@filehost/filedb\n")
    loaded = settings_with(HOMEPOT_ENV_FILE=str(env_file), DATABASE_URL="postgres://u@envhost/envdb")
    assert loaded["SECRET_KEY"] == "from-file"
    assert loaded["HOST"] == "envhost"


def test_env_example_is_a_working_development_configuration():
    loaded = settings_with(HOMEPOT_ENV_FILE=str(ROOT / ".env.example"))
    assert loaded["DEBUG"] is True
    assert loaded["ENGINE"] == "django.db.backends.sqlite3"


def test_env_example_documents_every_variable_the_project_reads():
    read = set(
        re.findall(r"""env\.\w+\(\s*["']([A-Z0-9_]+)["']""", (ROOT / "homepot" / "settings.py").read_text())
    )
    read |= {"HOMEPOT_ENV_FILE", "HOMEPOT_ADMIN_PASSWORD", "PORT"}  # read by settings, ensure_admin, run.sh
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read - documented == set()


# --- Production switches ------------------------------------------------------------------------


def test_https_hardening_is_off_by_default_so_the_demo_and_tests_work_over_http():
    loaded = settings_with(SECRET_KEY="k")
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SECURE_HSTS_SECONDS"] == 0
    assert loaded["SECURE_PROXY_SSL_HEADER"] is None


def test_https_hardening_switches_on_from_the_environment():
    loaded = settings_with(
        SECRET_KEY="k",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_PROXY_SSL_HEADER="true",
    )
    assert loaded["SECURE_SSL_REDIRECT"] is True
    assert loaded["SECURE_HSTS_SECONDS"] == 31536000
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_collected_static_files_are_served_without_debug(tmp_path):
    """What `docker compose up` relies on: gunicorn (via WhiteNoise) serves the admin's CSS."""
    with override_settings(STATIC_ROOT=tmp_path, DEBUG=False):
        call_command("collectstatic", interactive=False, verbosity=0)
        response = Client().get("/static/admin/css/base.css")
        assert response.status_code == 200
        assert b"".join(response.streaming_content).startswith(b"/*")


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_names_the_expected_services(compose):
    assert {"db", "redis", "mqtt", "migrate", "web", "worker", "beat", "bridge"} <= set(compose["services"])
    assert compose["services"]["bridge"]["command"][:3] == ["python", "manage.py", "mqtt_bridge"]
    # Every process finds the broker by its service name.
    assert compose["services"]["worker"]["environment"]["HOMEPOT_JOBS_MQTT_HOST"] == "mqtt"
    assert compose["services"]["db"]["image"].startswith("postgres:16")
    assert "postgres_data" in compose["volumes"]


def test_compose_processes_wait_for_healthy_services_and_run_existing_code(compose):
    services = compose["services"]
    for name in ("db", "redis", "web"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["db"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["build"] == "."
        assert (ROOT / services[name]["build"] / "Dockerfile").is_file()
    assert services["web"]["command"][:2] == ["gunicorn", "homepot.wsgi"]
    assert (ROOT / "homepot" / "wsgi.py").is_file()
    assert services["worker"]["command"][:4] == ["celery", "-A", "homepot", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "homepot", "beat"]
    assert (ROOT / "homepot" / "celery.py").is_file()


def test_compose_takes_configuration_from_the_environment_with_no_default_secret(compose):
    env = compose["services"]["web"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://homepot_user:")
    assert env["DATABASE_URL"].endswith("@pgbouncer:6432/homepot_db")  # through the pooler
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")  # compose refuses to start without one
    assert env["DEBUG"] == "false"


def test_compose_scales_web_and_worker_behind_a_load_balancer_and_a_pooler(compose):
    """`docker compose up --scale web=3 --scale worker=3`: no replica binds a host port (the
    load balancer does), every process reaches PostgreSQL through PgBouncer in transaction
    mode, beat may run on every host (one leader), bridges get client ids of their own."""
    services = compose["services"]
    assert "ports" not in services["web"] and services["web"]["expose"] == ["8000"]
    assert services["lb"]["ports"] == ["${PORT:-8000}:8000"]
    haproxy = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert "server-template web 10 web:8000" in haproxy and "option redispatch" in haproxy
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]
    pooler = (ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini").read_text().splitlines()
    assert "pool_mode = transaction" in pooler and "* = host=db port=5432" in pooler
    assert services["pgbouncer"]["build"] == "./deploy/pgbouncer"
    for name in ("worker", "bridge", "mqtt-auth"):
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy", name
    # Migrations alone go straight to PostgreSQL.
    assert services["migrate"]["environment"]["DATABASE_URL"].endswith("@db:5432/homepot_db")
    assert "--client-id" not in services["bridge"]["command"]
    assert django_settings.CELERY_BEAT_SCHEDULER == "redbeat.RedBeatScheduler"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs Debian's docker-compose")
def test_docker_compose_accepts_the_file_and_insists_on_a_secret_key():
    """`docker-compose config` checks the file against the Compose schema (no engine needed)."""
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_AWAY}

    def config(**extra):
        return subprocess.run(  # noqa: S603
            ["docker-compose", "config", "-q"],  # noqa: S607 (found on PATH on purpose)
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # docker-compose 1.29 interpolates every service, also those of the observability profile:
    # that profile's secrets are checked when its containers start, so `up` without the profile
    # needs none of them.
    broker = {"MQTT_ADMIN_PASSWORD": "a", "MQTT_BRIDGE_PASSWORD": "b"}
    accepted = config(SECRET_KEY="k", **broker)
    assert accepted.returncode == 0, accepted.stderr
    refused = config(**broker)
    assert refused.returncode != 0
    assert "Set SECRET_KEY" in refused.stderr
    refused = config(SECRET_KEY="k", **{k: v for k, v in broker.items() if k != "MQTT_ADMIN_PASSWORD"})
    assert refused.returncode != 0
    assert "Set MQTT_ADMIN_PASSWORD" in refused.stderr


def test_compose_broker_refuses_anonymous_clients_and_homepot_manages_its_logins(compose):
    services = compose["services"]
    env = services["web"]["environment"]
    assert env["HOMEPOT_MQTT_AUTH"] == "true"
    assert env["HOMEPOT_MQTT_ADMIN_PASSWORD"].startswith("${MQTT_ADMIN_PASSWORD:?")
    assert env["HOMEPOT_MQTT_BRIDGE_PASSWORD"].startswith("${MQTT_BRIDGE_PASSWORD:?")
    mounts = services["mqtt"]["volumes"]
    assert "./deploy/mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mounts
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert services["mqtt-auth"]["command"] == ["python", "manage.py", "mqtt_sync_auth"]
    assert services["bridge"]["depends_on"]["mqtt-auth"]["condition"] == "service_completed_successfully"


def test_dockerfile_installs_the_pinned_requirements_and_collects_static_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert "pip install -r requirements.txt" in dockerfile
    assert "collectstatic" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE)
