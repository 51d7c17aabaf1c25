"""A PostgreSQL outage under load, through gunicorn: what the clients are answered, how long
recovery takes, and whether any heartbeat answered 2xx is missing afterwards.

    python bench/bench_outage.py                          # 5 s outage, 6 client threads
    python bench/bench_outage.py --outage 10 --threads 8 --json result.json

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_outage; DROPPED),
     migrates it, creates `--devices` devices with credentials and an admin with a token;
  2. starts gunicorn (2 gthread workers x 4 threads, the test suite's settings: MD5 password
     hashing, so a login costs what its queries cost) whose database connections go through
     a TCP proxy on loopback (homepot/tests/tcp_proxy.py); the shared PostgreSQL is never
     stopped;
  3. runs client threads in a loop: heartbeats (device credentials, round robin), the device
     list (`GET /devices`, bearer token) and logins (`POST /api/v1/auth/login`), in the ratio
     4:1:1 of `--threads`;
  4. after `--warmup` seconds cuts the proxy (every connection closed, new ones closed on
     arrival) for `--outage` seconds, restores it, and keeps the load `--after` seconds more;
  5. reports the answers by door and status, the time from the restore to the first 2xx of
     each door, the non-2xx answers to requests sent after the restore, and checks that every
     heartbeat answered 2xx is in its device row (after the buffer's flush).

Connection: a PostgreSQL superuser through PGHOST (127.0.0.1), PGPORT (5432), PGUSER
(postgres), PGPASSWORD; Redis at REDIS_URL (redis://127.0.0.1:6379/0), keys under a prefix
of this run. A developer's .env is ignored.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEARTBEAT = "/api/v1/agent/heartbeat"
LOGIN = "/api/v1/auth/login"
PASSWORD = "bench-outage-password"  # noqa: S105 - a scratch account, dropped with the database


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_outage", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--threads", type=int, default=6, help="Client threads (4:1:1 heartbeat:list:login).")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--json", help="Also write the result here.")
    return parser.parse_args()


def pg_url(database: str, *, through_port: int | None = None) -> str:
    """The server's URL, or the proxy's on loopback when `through_port` is given."""
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    credentials = user + (f":{password}" if password else "")
    if through_port:
        return f"postgres://{credentials}@127.0.0.1:{through_port}/{database}"
    host, port = os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")
    return f"postgres://{credentials}@{host}:{port}/{database}"


def prepare(args, prefix: str) -> None:
    """Scratch database, migrated, with the fleet; Django set up in this process on it."""
    import psycopg

    with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{args.database}"')
    os.environ.update(
        {
            "HOMEPOT_ENV_FILE": "",
            "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
            "DATABASE_URL": pg_url(args.database),
            "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": prefix,
        }
    )
    subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True
    )
    import django

    django.setup()


def make_fleet(devices: int):
    from accounts.services import api_token_issue
    from accounts.tests.factories import AdminUserFactory
    from devices_app.services import device_credential_issue
    from devices_app.tests.factories import DeviceFactory

    admin = AdminUserFactory(password=PASSWORD)
    token = api_token_issue(user=admin, name="bench")[1]
    secrets = {}
    for device in DeviceFactory.create_batch(devices, status="offline", last_seen=None):
        secrets[device.pk] = device_credential_issue(actor=None, device=device)[1]
    return admin.username, token, secrets


class Load:
    def __init__(self, port, username, token, secrets, threads):
        from homepot.tests.served import call

        self.call = call
        self.port, self.username, self.token, self.secrets = port, username, token, secrets
        self.answers = []  # (door, device pk or None, sent, done, status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        doors = ["heartbeat"] * 4 + ["device list", "login"]
        self._threads = [
            threading.Thread(target=self._run, args=(doors[n % len(doors)], n), daemon=True)
            for n in range(threads)
        ]

    def start(self):
        for thread in self._threads:
            thread.start()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, door, offset):
        pks = sorted(self.secrets)
        n = offset
        while not self._stop.is_set():
            pk = None
            if door == "heartbeat":
                pk = pks[n % len(pks)]
                n += 1
                request = ("POST", HEARTBEAT, {}, {"Authorization": f"Device {self.secrets[pk]}"})
            elif door == "device list":
                request = ("GET", "/devices", None, {"Authorization": f"Bearer {self.token}"})
            else:
                request = ("POST", LOGIN, {"username": self.username, "password": PASSWORD}, None)
            sent = time.time()
            answer = self.call(self.port, *request)
            with self._lock:
                self.answers.append((door, pk, sent, time.time(), answer.status))


def report(load: Load, cut_at: float, restored_at: float) -> dict:
    counts = collections.defaultdict(collections.Counter)
    first_ok_after = {}
    failed_after = collections.Counter()
    for door, _pk, sent, done, status in load.answers:
        counts[door][status] += 1
        if sent >= restored_at:
            if 200 <= status < 300:
                first_ok_after[door] = min(first_ok_after.get(door, done), done)
            else:
                failed_after[door] += 1
    return {
        "outage_seconds": round(restored_at - cut_at, 2),
        "answers": {door: dict(sorted(c.items())) for door, c in counts.items()},
        "seconds_from_restore_to_first_2xx": {
            door: round(at - restored_at, 3) for door, at in first_ok_after.items()
        },
        "non_2xx_sent_after_restore": dict(failed_after),
    }


def lost_heartbeats(load: Load) -> int:
    from devices_app.models import Device
    from monitoring_app import seen_buffer

    seen_buffer.flush_seen()
    latest = {}
    for door, pk, sent, _done, status in load.answers:
        if door == "heartbeat" and 200 <= status < 300:
            latest[pk] = max(latest.get(pk, 0.0), sent)
    rows = dict(Device.objects.filter(pk__in=latest).values_list("pk", "last_seen"))
    return sum(1 for pk, sent in latest.items() if rows[pk] is None or rows[pk].timestamp() < sent)


def main() -> None:
    args = parse_args()
    prefix = f"homepot:seen:bench-outage-{uuid.uuid4().hex}:"
    prepare(args, prefix)
    from django.conf import settings

    from homepot.tests.served import Gunicorn
    from homepot.tests.tcp_proxy import TcpProxy

    username, token, secrets = make_fleet(args.devices)
    db = settings.DATABASES["default"]
    with TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        server = Gunicorn(
            {
                "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
                "DATABASE_URL": pg_url(args.database, through_port=proxy.port),
                "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": prefix,
                "HOMEPOT_MONITORING_TOUCH_SECONDS": "0",  # every heartbeat moves last_seen
                "HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP": "",
                "HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT": "",
                "LOG_LEVEL": "ERROR",
            }
        )
        try:
            server.wait_until_up()
            load = Load(server.port, username, token, secrets, args.threads)
            load.start()
            time.sleep(args.warmup)  # the load runs meanwhile
            cut_at = time.time()
            proxy.cut()
            time.sleep(args.outage)
            proxy.restore()
            restored_at = time.time()
            time.sleep(args.after)
            load.stop()
        finally:
            server.stop()
    result = report(load, cut_at, restored_at)
    result["heartbeats_answered_2xx_missing_from_the_database"] = lost_heartbeats(load)
    result["command"] = "python bench/bench_outage.py " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    from django.db import connections

    connections.close_all()
    import psycopg

    with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
