"""Benchmark the agent ingest (heartbeat, health, health batch) through gunicorn.

    python bench/bench_ingest.py                       # 4 and 32 connections, 15 s per run
    python bench/bench_ingest.py --duration 30 --workers 4 --json result.json

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_ingest; DROPPED), migrates
     it, creates a fleet (`--devices`, default 10,000) with `manage.py create_fleet`, and gives
     every device a credential (rows inserted directly; the secrets stay in this process);
  2. starts gunicorn on 127.0.0.1 with the same settings (`--workers` sync workers) twice: once
     with a bare WSGI "hello" (`bench.bench_ingest:hello_app`, the ceiling of the HTTP stack),
     once with HOMEPOT (`homepot.wsgi`);
  3. drives each with an asyncio HTTP/1.1 client at 4 and 32 concurrent connections, devices in
     round-robin, and reports requests per second, p50/p99 latency and errors for:
     hello; a heartbeat at first contact (device offline, credential never used: the row
     and the credential are written), and with HOMEPOT_MONITORING_TOUCH_SECONDS=0; a
     heartbeat in the steady state (device online, last seen 60 s ago, credential used a
     minute ago: the fleet's normal minute), buffered in Redis (the default), without the
     credential cache (HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS=0), without the Redis identities
     (`*_identity_off`: HOMEPOT_DEVICES_IDENTITY_SECONDS=0, every credential read in SQL) and unbuffered
     (HOMEPOT_MONITORING_BUFFER_HEARTBEATS=false: each writes the device row);
     a health report and a batch of `--batch` reports from one device (reports per second),
     both in the steady state, buffered in the Redis Stream (the default; the drain of what
     each run buffered is then timed in this process) and unbuffered
     (HOMEPOT_MONITORING_BUFFER_HEALTH=false: each request writes PostgreSQL); a batch for
     each `--batch` size;
     `heartbeat_warm` and `health_warm`: every device asked once before each measured run (every
     identity is in Redis: the all-hit case, whatever `--warm-every-device` says), and
     `heartbeat_mix` and `health_mix`: the same, then every MISS_EVERY-th request's identity
     entries are deleted from Redis just before it is sent (what their expiry does: a terminal
     reporting every 60 s with the 300 s bound misses about 1 request in 5). The deletions are
     made by this process (its CPU, not the server's).

The client runs on the same machine and takes CPU from the server; on a 2-CPU machine the
numbers are a floor. Compare the ratio to "hello" rather than the absolute figures, and
`app_cpu_ms_per_request` (CPU of the gunicorn processes and of the database's backends, per
request; Redis not included), which other load on the machine does not inflate.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import secrets
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import start_gunicorn, start_redis, stop  # noqa: E402


def hello_app(environ, start_response):
    """The ceiling: a WSGI app that answers a fixed JSON body (reads the request body first)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    body = b'{"status": "ok"}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def hello_redis_app(environ, start_response):
    """hello and one Redis round trip (PING on a kept connection, as the heartbeat sends its
    script): the floor under a heartbeat, which cannot answer without asking Redis."""
    from homepot.redis_clients import send_one

    send_one(os.environ["REDIS_URL"], 0.3, _PING)
    return hello_app(environ, start_response)


_PING = b"*1\r\n$4\r\nPING\r\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_ingest", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[4], help="gunicorn sync workers (several: each in turn)."
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="Repeat everything, hello included, this many times in turn."
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds per run.")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[50], help="Reports per batch request (one scenario each)."
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--health-redis-port", type=int, help="Port of the health buffer's own Redis (default: --port + 1)."
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="Run only these scenarios (hello always runs)."
    )
    parser.add_argument(
        "--warm-every-device",
        action="store_true",
        help="After the 1 s warm-up, one request per device (identities stored in Redis are then "
        "all there, as in a fleet reporting every minute with a bound of minutes).",
    )
    parser.add_argument(
        "--one-redis",
        action="store_true",
        help="REDIS_URL too on the health buffer's fsyncing Redis: identities, seen buffer and "
        "stream in one server, so a steady single report is one round trip "
        "(monitoring_app.ingest.health_report_buffered).",
    )
    parser.add_argument(
        "--client",
        choices=("lean", "asyncio"),
        default="lean",
        help="Load generator: `lean` (one thread around epoll) or `asyncio` (streams; the "
        "generator of the figures before ingest4). Both open one connection per request.",
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


# --- setup --------------------------------------------------------------------------------------


def issue_credentials() -> list[str]:
    """One credential per device, inserted in bulk; returns the secrets (device order)."""
    from devices_app.models import Device, DeviceCredential

    secrets_by_device = []
    rows = []
    for pk in Device.objects.order_by("pk").values_list("pk", flat=True).iterator():
        raw = "hpd_" + secrets.token_urlsafe(32)
        secrets_by_device.append(raw)
        rows.append(
            DeviceCredential(device_id=pk, key_prefix=raw[:12], key_hash=DeviceCredential.hash_key(raw))
        )
    DeviceCredential.objects.bulk_create(rows, batch_size=5000)
    return secrets_by_device


MISS_EVERY = 5  # the `*_mix` scenarios: 60 s between reports, identities kept 300 s


def identity_keys() -> list[tuple[str, str]]:
    """Per device (pk order, as issue_credentials), the names of its credential's identity
    entries in Redis (devices_app.identity_store), for the `*_mix` scenarios to expire."""
    from devices_app import identity_store
    from devices_app.models import DeviceCredential

    pairs = DeviceCredential.objects.order_by("device_id").values_list("key_hash", "device_id")
    return [(identity_store.credential_key(hashed), identity_store.device_key(pk)) for hashed, pk in pairs]


def expiring(make_request, keys: list[tuple[str, str]]):
    """`make_request`, with the identity entries of every MISS_EVERY-th request's device
    deleted first (as if they had expired): that request reads PostgreSQL and stores them."""
    from django.conf import settings

    from homepot.redis_clients import redis_client

    client = redis_client(settings.REDIS_URL, 1.0)

    def make(i):
        if i % MISS_EVERY == 0:
            client.delete(*keys[i % len(keys)])
        return make_request(i)

    return make


def steady_state() -> None:
    """Every device online and last seen 60 s ago, every credential used a minute ago: what
    a heartbeat meets when 100,000 terminals report every minute. Clears the heartbeat
    buffer (nothing flushes it during the benchmark)."""
    from django.db import connection

    from monitoring_app import seen_buffer

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices_app_device SET status = 'online', last_seen = now() - interval '60 seconds'"
        )
        cursor.execute("UPDATE devices_app_devicecredential SET last_used_at = now() - interval '1 minute'")
    seen_buffer._client().delete(seen_buffer._key())
    connection.close()


def timed_drain() -> dict:
    """Drain what the run left in the health buffer, in this process; reports per second."""
    from django.db import connection

    from monitoring_app import health_buffer
    from monitoring_app.models import HealthCheck

    before = HealthCheck.objects.count()
    start, cpu_start = time.perf_counter(), time.process_time()
    drained = health_buffer.drain(wait=True, max_seconds=600)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stored = HealthCheck.objects.count() - before
    connection.close()
    outcome = {
        "reports": drained,
        "rows_stored": stored,
        "seconds": round(elapsed, 2),
        "reports_per_s": round(drained / elapsed, 1) if drained else None,
        "python_cpu_ms_per_report": round(cpu * 1000 / drained, 4) if drained else None,
    }
    print(f"drain {json.dumps(outcome)}", flush=True)
    return outcome


# --- load -----------------------------------------------------------------------------------------


async def _one(host, port, request: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # sync workers close the connection after each answer
        status = int(status_line.split()[1]) if status_line else 0
    finally:
        writer.close()
    return time.perf_counter() - start, status


def _request(path: str, secret: str | None, body: dict | None) -> bytes:
    payload = json.dumps(body or {}).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
    ]
    if secret:
        headers.append(f"Authorization: Device {secret}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


def _lean_requests(port, connections, make_request, *, deadline=None, total=None):
    """The lean load generator (`--client lean`): one connection per request, as a terminal
    reporting once a minute opens one, `connections` of them open at a time, in one thread
    around epoll with no event-loop framework (asyncio's streams cost this process about
    0.15-0.25 ms of CPU a request, measured, on the same two cores as the server). Yields
    (latency in s, status) per request until `deadline` (perf_counter) or `total` requests."""
    selector = selectors.DefaultSelector()
    address = ("127.0.0.1", port)
    sent = [0]

    def open_one() -> bool:
        if total is not None and sent[0] >= total:
            return False
        if deadline is not None and time.perf_counter() >= deadline:
            return False
        sent[0] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(address)
        state = [sock, make_request(sent[0]), time.perf_counter(), b""]  # ..., the answer's first bytes
        selector.register(sock, selectors.EVENT_WRITE, state)
        return True

    open_now = sum(open_one() for _ in range(connections))
    while open_now:
        for key, events in selector.select(timeout=5):
            state = key.data
            sock = state[0]
            try:
                if events & selectors.EVENT_WRITE:
                    sock.send(state[1])  # a few hundred bytes: the socket's buffer takes them at once
                    selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                chunk = sock.recv(65536)
                if chunk:
                    if len(state[3]) < 12:
                        state[3] += chunk
                    continue  # sync workers close the connection after each answer
                status = int(state[3][9:12]) if len(state[3]) >= 12 else 0
            except OSError:
                status = 0
            selector.unregister(sock)
            sock.close()
            open_now -= 1
            yield time.perf_counter() - state[2], status
            open_now += open_one()
    selector.close()


async def _asyncio_count(port, connections, total, make_request) -> None:
    counter = [0]

    async def worker():
        while counter[0] < total:
            counter[0] += 1
            with contextlib.suppress(OSError):
                await _one("127.0.0.1", port, make_request(counter[0]))

    await asyncio.gather(*(worker() for _ in range(connections)))


async def _asyncio_requests(port, connections, duration, make_request) -> list[tuple[float, int]]:
    """The asyncio load generator (`--client asyncio`, the one before issue 11's ingest4)."""
    outcomes, counter = [], [0]
    deadline = time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < deadline:
            counter[0] += 1
            try:
                outcomes.append(await _one("127.0.0.1", port, make_request(counter[0])))
            except OSError:
                outcomes.append((0.0, 0))

    await asyncio.gather(*(worker() for _ in range(connections)))
    return outcomes


def _drive_count(client, port, connections, total, make_request) -> None:
    """Requests 1..total (devices in order), over `connections` connections; no figures."""
    if client == "asyncio":
        asyncio.run(_asyncio_count(port, connections, total, make_request))
    else:
        for _outcome in _lean_requests(port, connections, make_request, total=total):
            pass


def _drive(
    client, port, connections, duration, make_request, server_pids=(), postgres_pids=(), redis_pids=()
) -> dict:
    """`server_pids` and `postgres_pids`: the processes whose CPU counts as the server's
    (app_cpu_ms_per_request), the latter also reported alone; `redis_pids`: Redis servers of
    this bench's own (the health Redis), reported apart."""
    pids = [*server_pids, *postgres_pids]
    busy_before, own_before = _machine_busy_seconds(), _own_cpu_seconds()
    processes_before = _processes_cpu_seconds(pids)
    system_before = _processes_cpu_seconds(server_pids, system_only=True)
    redis_before = _processes_cpu_seconds(redis_pids)
    start = time.perf_counter()
    if client == "asyncio":
        outcomes = asyncio.run(_asyncio_requests(port, connections, duration, make_request))
    else:
        outcomes = list(_lean_requests(port, connections, make_request, deadline=start + duration))
    elapsed = time.perf_counter() - start
    client_cpu = _own_cpu_seconds() - own_before
    server_cpu = (_machine_busy_seconds() - busy_before) - client_cpu
    processes_cpu = _processes_cpu_seconds(pids)
    system_cpu = _processes_cpu_seconds(server_pids, system_only=True)
    redis_cpu = _processes_cpu_seconds(redis_pids)
    # CPU of this server's own processes (gunicorn workers, this database's backends) per
    # request: unlike the machine's, not inflated by whatever else runs on the machine.
    app_cpu = sum(processes_cpu[pid] - processes_before.get(pid, 0.0) for pid in processes_cpu)
    postgres_cpu = sum(
        processes_cpu[pid] - processes_before.get(pid, 0.0) for pid in processes_cpu if pid in postgres_pids
    )
    statuses = {}
    for _latency, status in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    ok = sorted(latency for latency, status in outcomes if latency)
    errors = sum(count for status, count in statuses.items() if not 200 <= status < 300)
    count = max(len(outcomes), 1)
    return {
        "requests": len(outcomes),
        "rps": round(len(outcomes) / elapsed, 1),
        "p50_ms": round(statistics.median(ok) * 1000, 2) if ok else None,
        "p99_ms": round(ok[int(len(ok) * 0.99) - 1] * 1000, 2) if ok else None,
        "errors": errors,
        "statuses": statuses,
        # CPU the machine spent on everything but this load generator (gunicorn, PostgreSQL,
        # Redis, the kernel's loopback TCP), per request: what a server with the clients
        # elsewhere would spend (other programs on the machine inflate it).
        "server_cpu_ms_per_request": round(server_cpu * 1000 / count, 3),
        "capacity_rps_on_this_machine": (
            round(len(outcomes) * os.cpu_count() / server_cpu) if server_cpu else None
        ),
        "app_cpu_ms_per_request": round(app_cpu * 1000 / count, 3),
        # This load generator's own CPU per request: its share of the same two cores.
        "client_cpu_ms_per_request": round(client_cpu * 1000 / count, 3),
        "postgres_cpu_ms_per_request": round(postgres_cpu * 1000 / count, 3),
        # Of the gunicorn processes' CPU, the kernel's share (sockets: the client's, Redis's).
        "app_system_cpu_ms_per_request": round(
            sum(system_cpu[pid] - system_before.get(pid, 0.0) for pid in system_cpu) * 1000 / count, 3
        ),
        "own_redis_cpu_ms_per_request": round(
            sum(redis_cpu[pid] - redis_before.get(pid, 0.0) for pid in redis_cpu) * 1000 / count, 3
        ),
        "load_average": os.getloadavg()[0],
    }


def _worker_pids(server: subprocess.Popen) -> list[int]:
    """The gunicorn master's worker processes (and the master)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [server.pid, *map(int, children)]


def _postgres_backend_pids() -> list[int]:
    """The PostgreSQL backends connected to this benchmark's database (the server's
    persistent connections, opened by the warm-up request)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids = [pid for (pid,) in cursor.fetchall()]
    connection.close()
    return pids


def _processes_cpu_seconds(pids, *, system_only: bool = False) -> dict[int, float]:
    """utime + stime (or stime alone) of each process still alive (from /proc/<pid>/stat)."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks = int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
        seconds[pid] = ticks / os.sysconf("SC_CLK_TCK")
    return seconds


def _machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def start_health_redis(port: int) -> subprocess.Popen:
    """The health buffer's own Redis, as docs/operations.md asks for it (every write fsynced
    before the answer): the buffer refuses a Redis that keeps nothing on disk."""
    return start_redis(port, "--appendonly", "yes", "--appendfsync", "always", "--save", "", purpose="health")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.bench_create_fleet import command_env, drop_database, machine, manage, recreate_database

    args = parse_args()
    recreate_database(args.database)
    env = command_env(args.database)
    manage(env, "migrate", "--noinput")
    manage(env, "create_fleet", "--sites", str(max(1, args.devices // 50)), "--devices-per-site", "50")
    health_redis_port = args.health_redis_port or args.port + 1
    health_redis = start_health_redis(health_redis_port)
    env["HOMEPOT_MONITORING_HEALTH_REDIS_URL"] = f"redis://127.0.0.1:{health_redis_port}/0"
    if args.one_redis:
        env["REDIS_URL"] = env["HOMEPOT_MONITORING_HEALTH_REDIS_URL"]
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
    import django

    django.setup()
    from django.db import connections

    device_secrets = issue_credentials()
    connections.close_all()
    n = len(device_secrets)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    report = {"status": "healthy", "cpu_percent": 12.5, "memory_percent": 40.1, "app_version": "7.3.0"}
    batches = {size: {"reports": [{**report, "timestamp": now} for _ in range(size)]} for size in args.batch}
    keys = identity_keys()
    connections.close_all()

    def per_device(build):
        """make_request from `build(device index)`, each device's request built once (what
        the generator does per request stays its sending and reading)."""
        built = {}

        def make(i):
            request = built.get(i % n)
            if request is None:
                request = built[i % n] = build(i % n)
            return request

        return make

    heartbeat = per_device(lambda k: _request("/api/v1/agent/heartbeat", device_secrets[k], {}))
    health = per_device(lambda k: _request("/api/v1/agent/health", device_secrets[k], report))

    def batch_of(size):
        return per_device(lambda k: _request("/api/v1/agent/health/batch", device_secrets[k], batches[size]))

    scenarios = [
        ("hello", "bench.bench_ingest:hello_app", {}, None, per_device(lambda k: _request("/", None, {}))),
        # hello and a Redis round trip: what no heartbeat can go below.
        (
            "hello_redis",
            "bench.bench_ingest:hello_redis_app",
            {},
            None,
            per_device(lambda k: _request("/", None, {})),
        ),
        # First contact: every device is offline, its credential never used.
        ("heartbeat_first_contact", "homepot.wsgi", {}, None, heartbeat),
        (
            "heartbeat_first_contact_every_write",
            "homepot.wsgi",
            {"HOMEPOT_MONITORING_TOUCH_SECONDS": "0"},
            None,
            heartbeat,
        ),
        # The fleet's normal minute: online, last seen 60 s ago, credential used recently.
        ("heartbeat_steady", "homepot.wsgi", {}, steady_state, heartbeat),
        # Credential identities not kept in Redis (devices_app.identity_store off): read from
        # PostgreSQL (with the per-process memory), as before they were; what a miss costs.
        (
            "heartbeat_steady_identity_off",
            "homepot.wsgi",
            {"HOMEPOT_DEVICES_IDENTITY_SECONDS": "0"},
            steady_state,
            heartbeat,
        ),
        (
            "health_identity_off",
            "homepot.wsgi",
            {"HOMEPOT_DEVICES_IDENTITY_SECONDS": "0"},
            steady_state,
            health,
        ),
        # The same without the credential cache: every heartbeat reads its credential in SQL.
        (
            "heartbeat_steady_uncached",
            "homepot.wsgi",
            {"HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS": "0"},
            steady_state,
            heartbeat,
        ),
        (
            "heartbeat_steady_unbuffered",
            "homepot.wsgi",
            {"HOMEPOT_MONITORING_BUFFER_HEARTBEATS": "false"},
            steady_state,
            heartbeat,
        ),
        # Health reports in the steady state (devices online): buffered in the Redis Stream
        # (the default), and written by each request (HOMEPOT_MONITORING_BUFFER_HEALTH=false).
        (
            "health",
            "homepot.wsgi",
            {},
            steady_state,
            health,
        ),
        (
            "health_unbuffered",
            "homepot.wsgi",
            {"HOMEPOT_MONITORING_BUFFER_HEALTH": "false"},
            steady_state,
            health,
        ),
        *(
            (f"health_batch_{size}{suffix}", "homepot.wsgi", extra, steady_state, batch_of(size))
            for size in args.batch
            for suffix, extra in (("", {}), ("_unbuffered", {"HOMEPOT_MONITORING_BUFFER_HEALTH": "false"}))
        ),
        # Every identity in Redis (warmed), and the fleet's mix of hits and expiries.
        ("heartbeat_warm", "homepot.wsgi", {}, steady_state, heartbeat),
        ("heartbeat_mix", "homepot.wsgi", {}, steady_state, expiring(heartbeat, keys)),
        ("health_warm", "homepot.wsgi", {}, steady_state, health),
        ("health_mix", "homepot.wsgi", {}, steady_state, expiring(health, keys)),
    ]
    results = {"devices": n, "workers": args.workers, "duration_s": args.duration, "runs": {}}
    chosen = [scenario for scenario in scenarios if not args.only or scenario[0] in ("hello", *args.only)]
    try:
        for round_number in range(1, args.rounds + 1):
            for workers in args.workers:
                for scenario in chosen:
                    suffix = (f"@w{workers}" if len(args.workers) > 1 else "") + (
                        f"#{round_number}" if args.rounds > 1 else ""
                    )
                    _run_scenario(args, env, n, scenario, workers, suffix, health_redis, results["runs"])
    finally:
        from monitoring_app import health_buffer, seen_buffer

        seen_buffer._client().delete(seen_buffer._key())  # heartbeats buffered during the runs
        health_buffer._client().delete(health_buffer.stream_key())
        stop(health_redis)
        if not args.keep:
            drop_database(args.database)
    for key, outcome in results["runs"].items():
        hello = results["runs"].get("hello" + key[len(outcome.get("scenario", key)) :], {}).get("rps")
        if hello and "rps" in outcome:
            outcome["ratio_to_hello"] = round(outcome["rps"] / hello, 3)
    results["machine"] = machine()
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def _run_scenario(args, env, n, scenario, workers, suffix, health_redis, runs) -> None:
    """One scenario on a fresh gunicorn of `workers` sync workers, at each concurrency; its
    outcomes go into `runs` under `<name>@<connections><suffix>`."""
    name, app, extra_env, prepare, make_request = scenario
    if prepare:
        prepare()
    server, _ = start_gunicorn(
        app, cwd=ROOT, workers=workers, env={**env, **extra_env}, port=args.port, ready_seconds=180
    )
    try:
        for connections_count in args.connections:
            # A short warm-up: every worker imports, connects and fills what it keeps.
            _drive(args.client, args.port, connections_count, 1.0, make_request)
            if name != "hello" and (args.warm_every_device or name.endswith(("_warm", "_mix"))):
                # Every device asked once: what each process or Redis keeps of a
                # credential is there, as in a fleet reporting every minute.
                _drive_count(args.client, args.port, connections_count, n, make_request)
            pids, backends = _worker_pids(server), _postgres_backend_pids()
            outcome = _drive(
                args.client,
                args.port,
                connections_count,
                args.duration,
                make_request,
                pids,
                backends,
                [health_redis.pid],
            )
            outcome["scenario"] = name
            if name.startswith("health_batch"):
                size = int(name.split("_")[2])
                outcome["reports_per_s"] = round(outcome["rps"] * size, 1)
            runs[f"{name}@{connections_count}{suffix}"] = outcome
            print(f"{name + suffix:24} c={connections_count:<3} {json.dumps(outcome)}", flush=True)
    finally:
        stop(server)
    if name.startswith("health"):
        runs[f"{name}@drain{suffix}"] = {"scenario": name, **timed_drain()}


if __name__ == "__main__":
    main()
