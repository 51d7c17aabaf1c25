"""CPU per heartbeat of the WSGI application itself, called in-process (no HTTP, no gunicorn):
what the Python side of a steady heartbeat costs, load-independent enough to compare two
versions on a busy machine.

    DATABASE_URL=postgres://.../scratch SECRET_KEY=x HOMEPOT_ENV_FILE= \
        python bench/bench_heartbeat_wsgi.py --devices 1500 --requests 1500 [--profile]

Needs a migrated SCRATCH database with a fleet (`manage.py create_fleet`): the credentials of
the first `--devices` devices are replaced, every device is set online and last seen 60 s
ago. Devices are used in turn; with as many devices as requests no credential is used twice
(the credential memory never hits); with few devices, a device comes back within the memory's
bound and the touch window. Prints the process CPU (and wall) time per request.
"""

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

from homepot.wsgi import application  # noqa: E402 (after the settings module is chosen)


def fresh_credentials(count: int) -> list[str]:
    from django.db import connection

    from devices_app.models import Device, DeviceCredential
    from devices_app.services import CREDENTIAL_PREFIX

    pks = list(Device.objects.order_by("pk").values_list("pk", flat=True)[:count])
    DeviceCredential.objects.filter(device_id__in=pks).delete()
    keys, rows = [], []
    for pk in pks:
        raw = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        keys.append(raw)
        rows.append(
            DeviceCredential(device_id=pk, key_prefix=raw[:12], key_hash=DeviceCredential.hash_key(raw))
        )
    DeviceCredential.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices_app_device SET status = 'online', last_seen = now() - interval '60 seconds'"
        )
        cursor.execute("UPDATE devices_app_devicecredential SET last_used_at = now()")
    return keys


_BODIES = {
    "heartbeat": ("/api/v1/agent/heartbeat", {}),
    "health": (
        "/api/v1/agent/health",
        {"status": "healthy", "cpu_percent": 12.5, "memory_percent": 40.1, "app_version": "7.3.0"},
    ),
}
# A batch of 50 (a terminal catching up), stamped when this process starts.
_BODIES["batch"] = (
    "/api/v1/agent/health/batch",
    {
        "reports": [{**_BODIES["health"][1], "timestamp": datetime.datetime.now(datetime.UTC).isoformat()}]
        * 50
    },
)


def heartbeat(key: str, kind: str = "heartbeat") -> None:
    path, data = _BODIES[kind]
    body = json.dumps(data).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Device {key}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    statuses = []
    b"".join(application(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    if not statuses[0].startswith(("200", "201")):
        raise RuntimeError(f"{kind} answered {statuses[0]}")


def forget_identity(key: str) -> None:
    """Delete the credential's Redis identity entries, as their expiry would: the next
    request with `key` misses (reads PostgreSQL and stores them again)."""
    from devices_app import identity_store
    from devices_app.models import DeviceCredential
    from homepot.redis_clients import redis_client

    client = redis_client(identity_store._url(), 0.3)
    credential_key = identity_store.credential_key(DeviceCredential.hash_key(key))
    entry = client.get(credential_key)
    names = [credential_key]
    if entry and entry != identity_store.TOMBSTONE:
        names.append(identity_store.device_key(int(entry.split(b"|")[1])))
    client.delete(*names)


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _process_cpu(pid: int) -> float:
    """utime + stime of a process on this machine (the PostgreSQL backend serving us)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--profile", action="store_true", help="Also print a cProfile (CPU clock).")
    parser.add_argument(
        "--warm-every-device",
        action="store_true",
        help="Warm up with one heartbeat per device (what Redis keeps of each credential is then there).",
    )
    parser.add_argument("--kind", choices=sorted(_BODIES), default="heartbeat")
    parser.add_argument(
        "--miss-every",
        type=int,
        default=0,
        help="Delete the identity entries of every Nth request's credential just before it (its "
        "expiry: 5 is a fleet reporting every 60 s with the 300 s bound). The deletions' own "
        "CPU is measured apart and taken out.",
    )
    args = parser.parse_args()
    keys = fresh_credentials(args.devices)
    warm = len(keys) if args.warm_every_device else min(200, args.requests)
    for i in range(warm):  # warm-up: imports, connections
        heartbeat(keys[i % len(keys)], args.kind)
    backend = _backend_pid()
    forgetting = 0.0
    cpu, wall, backend_cpu = time.process_time(), time.perf_counter(), _process_cpu(backend)
    for i in range(args.requests):
        if args.miss_every and i % args.miss_every == 0:
            started = time.process_time()
            forget_identity(keys[i % len(keys)])
            forgetting += time.process_time() - started
        heartbeat(keys[i % len(keys)], args.kind)
    cpu, wall = time.process_time() - cpu - forgetting, time.perf_counter() - wall
    backend_cpu = _process_cpu(backend) - backend_cpu
    per_request = 1000 / args.requests
    print(
        f"cpu {cpu * per_request:.3f} ms/request, wall {wall * per_request:.3f} ms/request, "
        f"PostgreSQL backend cpu {backend_cpu * per_request:.3f} ms/request"
    )
    if args.profile:
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for i in range(args.requests):
            heartbeat(keys[i % len(keys)], args.kind)
        profile.disable()
        pstats.Stats(profile).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(
            int(os.environ.get("ROWS", "40"))
        )


if __name__ == "__main__":
    main()
