"""A dependency that is away gives 503 with Retry-After, never 500, and nothing answered 2xx
is lost (homepot.outage).

PostgreSQL is cut with a TCP proxy between a real gunicorn and the shared server (never
stopped): every connection is closed, new ones are closed on arrival, then it is restored.
Redis is "down" by pointing REDIS_URL at a port nothing listens on.
"""

import threading
import time
from dataclasses import dataclass

import pytest
from django.db import InterfaceError, connection, connections, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot import outage
from homepot.tests.served import Answer, Gunicorn, call, free_port
from homepot.tests.tcp_proxy import TcpProxy
from monitoring_app import seen_buffer

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = "/api/v1/agent/heartbeat"
LOGIN = "/api/v1/auth/login"
PASSWORD = "correct-horse-battery"  # accounts.tests.factories


def assert_unavailable(answer: Answer, *, api: bool = True, door: str = "") -> None:
    assert answer.status == 503, (door, answer.status, answer.body[:300])
    assert int(answer.headers["retry-after"]) > 0
    if api:
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {
            "error": {"status": 503, "code": "database_unavailable", "message": outage.API_MESSAGE}
        }
    else:
        assert answer.headers["content-type"].startswith("text/html")


@dataclass
class Fleet:
    secrets: dict  # device pk -> credential
    token: str
    username: str
    session: str


@pytest.fixture
def fleet(admin_user):
    devices = DeviceFactory.create_batch(4, status=DeviceStatus.OFFLINE, last_seen=None)
    secrets = {device.pk: device_credential_issue(actor=None, device=device)[1] for device in devices}
    browser = Client()
    browser.force_login(admin_user)
    return Fleet(
        secrets=secrets,
        token=api_token_issue(user=admin_user, name="outage test")[1],
        username=admin_user.username,
        session=browser.cookies["sessionid"].value,
    )


def database_url(port: int) -> str:
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@127.0.0.1:{port}/{db['NAME']}"


@pytest.fixture(params=[True, False], ids=["buffered", "direct"])
def served(request, settings, isolated_heartbeat_buffer, isolated_throttle):
    """gunicorn (2 workers x 4 threads) whose every database connection goes through a
    proxy the test can cut. Heartbeats are buffered in Redis or written directly (both
    paths that answer 200); every heartbeat moves last_seen (no touch window), so each one
    answered 200 must be visible in the row."""
    db = connection.settings_dict
    settings.HOMEPOT_MONITORING_BUFFER_HEARTBEATS = True  # so flush_seen() here empties the buffer
    with TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        server = Gunicorn(
            {
                "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
                "DATABASE_URL": database_url(proxy.port),
                "REDIS_URL": settings.REDIS_URL,
                "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": isolated_heartbeat_buffer,
                "HOMEPOT_MONITORING_BUFFER_HEARTBEATS": str(request.param).lower(),
                "HOMEPOT_MONITORING_TOUCH_SECONDS": "0",
                # Without the credential memory: a remembered device's buffered heartbeat needs
                # no PostgreSQL and would be acknowledged (kept in Redis) during the cut.
                "HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS": "0",
                # Nor the Redis identities, for the same reason (that case is tested below).
                "HOMEPOT_DEVICES_IDENTITY_SECONDS": "0",
                "HOMEPOT_ACCOUNTS_THROTTLE_KEY_PREFIX": isolated_throttle,
                "HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP": "",
                "HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT": "",
                "LOG_LEVEL": "ERROR",
            }
        )
        try:
            server.wait_until_up()
            yield server, proxy
        finally:
            server.stop()


class HeartbeatLoad:
    """Threads sending heartbeats for every device in turn, each answer kept with the time
    it was sent (before the server could have stamped it)."""

    def __init__(self, port: int, secrets: dict, threads: int = 3):
        self.port, self.secrets = port, secrets
        self.answers: list[tuple[int, float, Answer]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, offset: int) -> None:
        pks = sorted(self.secrets)
        n = offset
        while not self._stop.is_set():
            pk = pks[n % len(pks)]
            n += 1
            sent = time.time()
            answer = call(self.port, "POST", HEARTBEAT, {}, {"Authorization": f"Device {self.secrets[pk]}"})
            with self._lock:
                self.answers.append((pk, sent, answer))

    def count(self, status: int, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for _, sent, answer in self.answers if answer.status == status and sent >= since)

    def wait_for(self, condition, deadline_seconds: float = 60) -> None:
        give_up = time.monotonic() + deadline_seconds
        while not condition():
            assert time.monotonic() < give_up, "the load did not get there"
            time.sleep(0.02)  # polling other threads' progress, not waiting for a save


def test_postgresql_outage_answers_503_then_recovers_and_loses_no_acknowledged_heartbeat(served, fleet):
    server, proxy = served
    first_device = min(fleet.secrets)
    doors = {
        "heartbeat": lambda: call(
            server.port, "POST", HEARTBEAT, {}, {"Authorization": f"Device {fleet.secrets[first_device]}"}
        ),
        "device list": lambda: call(
            server.port, "GET", "/devices", headers={"Authorization": f"Bearer {fleet.token}"}
        ),
        "login": lambda: call(server.port, "POST", LOGIN, {"username": fleet.username, "password": PASSWORD}),
    }

    def admin():
        return call(server.port, "GET", "/admin/", headers={"Cookie": f"sessionid={fleet.session}"})

    for name, door in doors.items():
        assert door().status == 200, name
    assert admin().status == 200

    with HeartbeatLoad(server.port, fleet.secrets) as load:
        load.wait_for(lambda: load.count(200) >= 20)

        proxy.cut()
        for name, door in doors.items():
            assert_unavailable(door(), door=name)
        assert_unavailable(admin(), api=False)
        probe = call(server.port, "GET", "/healthz")
        assert probe.status == 503 and int(probe.headers["retry-after"]) > 0
        load.wait_for(lambda: load.count(503) >= 20)

        proxy.restore()
        restored = time.time()
        # The very first request after the database is back succeeds, and so does every
        # one after it, on whichever worker thread it lands (8 of them, each with a
        # connection the cut broke).
        for _ in range(10):
            for name, door in doors.items():
                answer = door()
                assert answer.status == 200, (name, answer.status, answer.body[:300])
        assert admin().status == 200
        load.wait_for(lambda: load.count(200, since=restored) >= 20)

    statuses = {answer.status for _, _, answer in load.answers}
    assert statuses == {200, 503}, statuses  # never 500, never a dropped connection
    for _, sent, answer in load.answers:
        if answer.status == 503:
            assert_unavailable(answer)
        if sent >= restored:
            assert answer.status == 200

    # Every heartbeat answered 200 reached the device's row (buffered ones with the flush
    # the beat would run). last_seen only moves forward, so the latest one covers the rest.
    seen_buffer.flush_seen()
    latest_ok: dict[int, float] = {}
    for pk, sent, answer in load.answers:
        if answer.status == 200:
            latest_ok[pk] = max(latest_ok.get(pk, 0.0), sent)
    assert set(latest_ok) == set(fleet.secrets)
    for device in Device.objects.filter(pk__in=latest_ok):
        assert device.last_seen.timestamp() >= latest_ok[device.pk], device.device_id


def test_a_heartbeat_whose_identity_is_in_redis_is_kept_through_a_postgresql_outage(
    settings, isolated_heartbeat_buffer, isolated_identity_store
):
    """By design (docs/operations.md, "When PostgreSQL or Redis is away"): a steady heartbeat
    read from Redis needs no PostgreSQL, so it is answered 200 during the cut; it waits in the
    buffer and reaches the row with the first flush after the database is back."""
    db = connection.settings_dict
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    secret = device_credential_issue(actor=None, device=device)[1]
    headers = {"Authorization": f"Device {secret}"}
    with TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        server = Gunicorn(
            {
                "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
                "DATABASE_URL": database_url(proxy.port),
                "REDIS_URL": settings.REDIS_URL,
                "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": isolated_heartbeat_buffer,
                "HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX": isolated_identity_store,
                "LOG_LEVEL": "ERROR",
            },
            workers=1,
            threads=1,
        )
        try:
            server.wait_until_up()
            assert call(server.port, "POST", HEARTBEAT, {}, headers).status == 200  # stored in Redis
            proxy.cut()
            sent = time.time()
            assert call(server.port, "POST", HEARTBEAT, {}, headers).status == 200
            proxy.restore()
        finally:
            server.stop()
    seen_buffer.flush_seen()
    assert Device.objects.get(pk=device.pk).last_seen.timestamp() >= sent


# --- the middleware door ---------------------------------------------------------------


def unreachable_database():
    """A connection of the project's own backend to a port nothing listens on: the real
    error psycopg and Django give when the server is away."""
    settings_dict = {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": free_port()}
    return connections.create_connection("default").__class__(settings_dict, alias="unreachable")


class UnreachableDatabaseMiddleware:
    """Reaches for the database outside any view, as the session middleware does when it
    saves a session."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        wrapper = unreachable_database()
        try:
            wrapper.cursor()
        finally:
            wrapper.close()
        return response


@pytest.fixture
def failing_middleware(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.UnreachableDatabaseMiddleware"]
    return Client(raise_request_exception=False)


def answer_of(response) -> Answer:
    return Answer(response.status_code, {k.lower(): v for k, v in response.items()}, response.content)


def test_a_middleware_that_cannot_reach_the_database_answers_503_in_the_api_shape(failing_middleware):
    assert_unavailable(answer_of(failing_middleware.get("/api/v1/agent/heartbeat")))


def test_a_middleware_that_cannot_reach_the_database_answers_a_plain_503_in_the_admin(failing_middleware):
    assert_unavailable(answer_of(failing_middleware.get("/admin/login/")), api=False)


# --- which errors count as "away" --------------------------------------------------------


def _error_of(run):
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        return exc
    raise AssertionError("no error")


def _queries(*statements):
    def run():
        with transaction.atomic(), connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)

    return run


def test_connection_level_failures_count_as_the_database_being_away():
    wrapper = unreachable_database()
    assert outage.database_unavailable(_error_of(wrapper.cursor))  # connection refused

    # A session the server ends (pg_terminate_backend: 57P01, as in a restart).
    victim = connections.create_connection("default")
    try:
        with victim.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

        def query_on_victim():
            with victim.cursor() as cursor:
                cursor.execute("SELECT 1")

        exc = _error_of(query_on_victim)
        assert exc.__cause__.sqlstate == "57P01"
        assert outage.database_unavailable(exc)
        # The connection is now closed ("the connection is closed", no SQLSTATE): counts too.
        assert outage.database_unavailable(_error_of(query_on_victim))
    finally:
        victim.close()


def test_an_interface_error_on_a_live_connection_stays_an_error():
    cursor = connection.cursor()
    cursor.close()
    exc = _error_of(lambda: cursor.execute("SELECT 1"))  # "the cursor is closed": a bug
    assert isinstance(exc, InterfaceError), exc
    assert not outage.database_unavailable(exc)


@pytest.mark.parametrize(
    "statements",
    [
        ["SELEC 1"],  # ProgrammingError: a bug
        ["SELECT 1 / 0"],  # DataError
        ["SELECT 'x'::int"],  # DataError
        ["SET LOCAL statement_timeout = 1", "SELECT pg_sleep(1)"],  # OperationalError, 57014
    ],
)
def test_query_errors_stay_errors(statements):
    exc = _error_of(_queries(*statements))
    assert exc.__class__.__module__ == "django.db.utils", exc
    assert not outage.database_unavailable(exc), exc


def test_a_lock_wait_that_times_out_stays_an_error():
    holder = connections.create_connection("default")
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE sites_app_site IN ACCESS EXCLUSIVE MODE")
        exc = _error_of(_queries("SET LOCAL lock_timeout = 1", "SELECT 1 FROM sites_app_site"))
        assert getattr(exc.__cause__, "sqlstate", None) == "55P03", exc  # an OperationalError
        assert not outage.database_unavailable(exc)
    finally:
        holder.rollback()
        holder.close()


# --- Redis away ----------------------------------------------------------------------------


@pytest.fixture
def redis_down(settings, monkeypatch):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(seen_buffer, "_down_until", 0.0)  # this process's memory of the outage


def test_login_works_without_redis(redis_down, admin_user):
    response = APIClient().post(LOGIN, {"username": admin_user.username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content


def test_a_heartbeat_without_redis_is_written_to_the_row(redis_down, settings):
    settings.HOMEPOT_MONITORING_TOUCH_SECONDS = 0
    device = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=timezone.now())  # would be buffered
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device_credential_issue(actor=None, device=device)[1]}")
    before = timezone.now()
    for _ in range(2):  # the first finds Redis away, the second does not try it again
        response = client.post(HEARTBEAT, {}, format="json")
        assert response.status_code == 200, response.content
    device.refresh_from_db()
    assert device.last_seen >= before


def test_login_refused_without_redis_when_failing_closed_says_when_to_retry(redis_down, settings, admin_user):
    settings.HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN = False
    response = APIClient().post(LOGIN, {"username": admin_user.username, "password": PASSWORD}, format="json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "throttle_unavailable"
    assert int(response["Retry-After"]) > 0
