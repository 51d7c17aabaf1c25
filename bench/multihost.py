#!/usr/bin/env python3
"""HOMEPOT on several hosts, with one application host killed mid-run (issue 13).

Hosts are Linux network namespaces on one bridge (made here, removed at the end, also on
Ctrl-C or SIGTERM); only addresses inside them are used, and nothing on the machine's own
127.0.0.1 services is touched:

  db      PostgreSQL, PgBouncer (transaction mode), Redis, Mosquitto: own instances, data in a
          temporary directory
  app1..N gunicorn, a Celery worker, Celery beat (RedBeat: one leader), an MQTT bridge (one
          shared subscription)
  lb      HAProxy, health-checking the app hosts' /healthz
  load    simulated terminals (manage.py simulate_fleet: HTTP-polling and MQTT) and a
          heartbeat load generator that records every heartbeat answered 2xx

Scenario: DEVICES devices (half polling over HTTP through the load balancer, half on MQTT),
one job to all of them, heartbeats at DEVICES per minute through the load balancer. After
--kill-after seconds every process of the app host whose beat leads is killed (SIGKILL)
and its network cut; --revive-after seconds later it comes back. Then it checks: every
delivery final, the job completed, each terminal answered each delivery once, every
heartbeat answered 2xx reached its device row, beat failed over; and reports the errors
seen while the host was away.

With --throughput SECONDS it first measures heartbeats per second through the load
balancer with 1, 2, ... N app hosts (a closed loop of --connections clients).

    sudo .venv/bin/python bench/multihost.py                       # 3 app hosts, 10,000 devices
    sudo .venv/bin/python bench/multihost.py --devices 100000 --throughput 20 --json out.json
    scripts/multihost.sh ...                                       # the same, via the wrapper

Needs root, `ip`, PostgreSQL's server binaries, pgbouncer, haproxy, redis-server, mosquitto.
Exit status 0 when every check held; the JSON report names each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The run's /24, chosen from its tag by use_subnet() before anything is made, so two runs (a
# benchmark and someone's test suite) can share the machine.
SUBNET = DB_IP = LB_IP = LOAD_IP = ""
BASE_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("ip", "pgbouncer", "haproxy", "redis-server", "mosquitto", "runuser")


def app_ip(n: int) -> str:
    return f"{SUBNET}.{10 + n}"


def subnet_for(tag: str, taken: set[str]) -> str:
    """A /24 inside 10.208.0.0/12 picked by the tag's hash, stepping past any /24 another
    namespace on the machine already uses (hash collisions: 1 in 4,096 without the check)."""
    start = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:2]) % 4096
    for step in range(4096):
        n = (start + step) % 4096
        subnet = f"10.{208 + n // 256}.{n % 256}"
        if subnet not in taken:
            return subnet
    raise RuntimeError("no free /24 in 10.208.0.0/12")


def subnets_in_use() -> set[str]:
    """The /24 prefixes of every IPv4 address in every named namespace and the machine's own."""
    listing = run("ip", "-o", "-4", "addr", "show", check=False).stdout
    listing += run("ip", "-all", "netns", "exec", "ip", "-o", "-4", "addr", "show", check=False).stdout
    found = set()
    for word in listing.split():
        if word.count(".") == 3 and "/" in word:
            found.add(word.rsplit(".", 1)[0])
    return found


def use_subnet(subnet: str) -> None:
    global SUBNET, DB_IP, LB_IP, LOAD_IP
    SUBNET = subnet
    DB_IP, LB_IP, LOAD_IP = f"{subnet}.2", f"{subnet}.3", f"{subnet}.4"


def missing_tools() -> list[str]:
    """Why this machine cannot run the proof (empty: it can)."""
    reasons = [f"no `{tool}` on PATH" for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        reasons.append("not root (network namespaces need it)")
    if pg_bin() is None:
        reasons.append("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql")
    return reasons


def pg_bin() -> Path | None:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    return versions[-1].parent if versions else None


def run(*command, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, **kwargs)  # noqa: S603


# --- hosts -------------------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    link: str  # its veth end on the switch: down = the host's network is cut
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)


class Cluster:
    """The namespaces, their links and every process started in them; `close` removes all."""

    def __init__(self, workdir: Path, tag: str):
        self.workdir, self.tag = workdir, tag
        self.switch = f"{tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.env: dict[str, str] = {"PATH": BASE_PATH, "HOME": "/root"}

    # namespaces and links
    def create_switch(self) -> None:
        run("ip", "netns", "add", self.switch)
        self.ns_run(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self.ns_run(self.switch, "ip", "link", "set", "br0", "up")

    def add_host(self, name: str, ip: str) -> Host:
        # Interface names have 15 characters: tag (8) + host name (<= 6) + "p" still fits.
        ns, link = f"{self.tag}-{name}", f"{self.tag}{name}"[:15]
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"[:15])
        run("ip", "link", "set", f"{link}p"[:15], "netns", ns)
        run("ip", "link", "set", link, "netns", self.switch)
        self.ns_run(self.switch, "ip", "link", "set", link, "master", "br0", "up")
        self.ns_run(ns, "ip", "link", "set", f"{link}p"[:15], "name", "eth0")
        self.ns_run(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        self.ns_run(ns, "ip", "link", "set", "eth0", "up")
        self.ns_run(ns, "ip", "link", "set", "lo", "up")
        host = self.hosts[name] = Host(name, ns, ip, link)
        return host

    def cut(self, host: Host) -> None:
        self.ns_run(self.switch, "ip", "link", "set", host.link, "down")

    def reconnect(self, host: Host) -> None:
        self.ns_run(self.switch, "ip", "link", "set", host.link, "up")

    @staticmethod
    def ns_run(ns: str, *command, check=True, **kwargs) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns, *command, check=check, **kwargs)

    # processes
    def start(self, host: Host, name: str, command: list[str], *, env=None, user: str | None = None):
        log = (self.workdir / "logs" / f"{host.name}-{name}.log").open("a")
        prefix = ["ip", "netns", "exec", host.ns]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        process = subprocess.Popen(  # noqa: S603 (commands built here)
            prefix + command,
            cwd=ROOT,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        host.processes[name] = process
        return process

    def kill_host(self, host: Host) -> int:
        """SIGKILL to every process in the host's namespace (its whole process tree)."""
        pids = run("ip", "netns", "pids", host.ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for process in host.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        host.processes.clear()
        return len(pids)

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.kill_host(host)
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            run("ip", "netns", "del", ns, check=False)
        self.hosts.clear()


def leftover_cleanup(tag: str) -> None:
    """Namespaces (and their processes) a killed run left behind, and a veth it had made but
    not yet moved (scripts/multihost.sh calls this from its trap with the run's tag). Only
    names of exactly this tag: another run beside it keeps its own."""
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(f"{tag}-"):
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(tag) and re.fullmatch(r"(db|lb|load|app\d+)p?", name[len(tag) :]):
            run("ip", "link", "del", name, check=False)


# --- the database host ---------------------------------------------------------------------------


def wait_tcp(cluster: Cluster, host: Host, ip: str, port: int, timeout: float = 60) -> None:
    probe = f"import socket; socket.create_connection(('{ip}', {port}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while cluster.ns_run(host.ns, sys.executable, "-c", probe, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{ip}:{port} did not answer within {timeout} s (logs: {cluster.workdir}/logs)"
            )
        time.sleep(0.3)


def start_database_host(cluster: Cluster, db: Host) -> None:
    work, pgdir = cluster.workdir, cluster.workdir / "pg"
    pgdir.mkdir()
    shutil.chown(pgdir, "postgres", "postgres")
    run(
        "runuser",
        "-u",
        "postgres",
        "--",
        str(pg_bin() / "initdb"),
        "-D",
        str(pgdir / "data"),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    )
    # A scratch instance: no fsync (the database host is never the one killed here).
    (pgdir / "data" / "postgresql.auto.conf").write_text(
        f"listen_addresses = '{DB_IP}'\nport = 5432\nunix_socket_directories = '{pgdir}'\n"
        "max_connections = 100\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        "shared_buffers = 256MB\ntimezone = 'UTC'\n"
        # A client host that vanished (network cut) is noticed by keepalives, not hours later.
        "tcp_keepalives_idle = 5\ntcp_keepalives_interval = 2\ntcp_keepalives_count = 3\n"
    )
    (pgdir / "data" / "pg_hba.conf").write_text(f"local all all trust\nhost all all {SUBNET}.0/24 trust\n")
    cluster.start(db, "postgres", [str(pg_bin() / "postgres"), "-D", str(pgdir / "data")], user="postgres")
    wait_tcp(cluster, db, DB_IP, 5432)
    bouncer = work / "pgbouncer"
    bouncer.mkdir()
    (bouncer / "userlist.txt").write_text('"postgres" ""\n')
    (bouncer / "pgbouncer.ini").write_text(POOLER_INI.format(db_ip=DB_IP, dir=bouncer))
    shutil.chown(bouncer, "postgres", "postgres")
    start_pgbouncer(cluster, db)
    (work / "redis").mkdir()
    start_redis(cluster, db)
    (work / "mosquitto.conf").write_text(
        f"listener 1883 {DB_IP}\nallow_anonymous true\npersistence false\nuser root\n"
        "max_queued_messages 100000\nmax_inflight_messages 1000\n"
    )
    cluster.start(db, "mosquitto", ["mosquitto", "-c", str(work / "mosquitto.conf")])
    for port in (6432, 6379, 1883):
        wait_tcp(cluster, db, DB_IP, port)


def start_pgbouncer(cluster: Cluster, db: Host) -> None:
    bouncer = cluster.workdir / "pgbouncer"
    # A pidfile left by a killed PgBouncer would stop the restart.
    (bouncer / "pgbouncer.pid").unlink(missing_ok=True)
    cluster.start(db, "pgbouncer", ["pgbouncer", str(bouncer / "pgbouncer.ini")], user="postgres")


def start_redis(cluster: Cluster, db: Host) -> None:
    """Redis as production runs it (docker-compose.yml): with its append-only file, so a
    killed Redis comes back with its queues, the beat schedule and the heartbeat buffer.
    Every write reaches the file (the kernel's page cache) before its reply is sent:
    a killed process loses nothing it acknowledged; `appendfsync everysec` bounds what a
    machine crash loses to about a second."""
    cluster.start(
        db,
        "redis",
        [
            "redis-server",
            *("--bind", DB_IP, "--port", "6379", "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
            *("--dir", str(cluster.workdir / "redis"), "--protected-mode", "no"),
        ],
    )


# Transaction mode: a server connection serves one transaction at a time, so the server
# connections needed are the transactions running at once, not the clients connected.
# idle_transaction_timeout: a client that died inside a transaction (its host killed, its
# network cut) gives back its server connection, and the locks it held, within 15 s.
POOLER_INI = """[databases]
* = host={db_ip} port=5432

[pgbouncer]
listen_addr = {db_ip}
listen_port = 6432
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
reserve_pool_size = 5
max_db_connections = 40
idle_transaction_timeout = 15
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
tcp_keepalive = 1
tcp_keepidle = 5
tcp_keepintvl = 2
tcp_keepcnt = 3
pidfile = {dir}/pgbouncer.pid
"""


# --- application hosts and the load balancer ---------------------------------------------------


def app_env(args, database_port: int = 6432) -> dict[str, str]:
    return {
        "PATH": BASE_PATH,
        "HOME": "/root",
        "DJANGO_SETTINGS_MODULE": "homepot.settings",
        "HOMEPOT_ENV_FILE": "",
        "SECRET_KEY": "multihost-" + secrets.token_urlsafe(16),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "*",
        "DATABASE_URL": f"postgres://postgres@{DB_IP}:{database_port}/homepot",
        # Through PgBouncer in transaction mode (6432): no prepared statements (homepot/db/prepared.py).
        "HOMEPOT_DB_PREPARED_STATEMENTS": "false" if database_port == 6432 else "true",
        "REDIS_URL": f"redis://{DB_IP}:6379/0",
        "HOMEPOT_JOBS_MQTT_HOST": DB_IP,
        "HOMEPOT_BEAT_LOCK_SECONDS": str(args.beat_lock_seconds),
        "HOMEPOT_CELERY_LOG_TASKS": "true",
        # Every heartbeat answered 2xx moves last_seen (the check reads it).
        "HOMEPOT_MONITORING_TOUCH_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def start_app_host(cluster: Cluster, host: Host, args) -> None:
    manage = [sys.executable, "manage.py"]
    cluster.start(
        host,
        "gunicorn",
        [
            str(VENV_BIN / "gunicorn"),
            "homepot.wsgi",
            "-b",
            f"{host.ip}:8000",
            "-w",
            str(args.web_workers),
            "--threads",
            "4",
            "--timeout",
            "30",
        ],
    )
    cluster.start(
        host,
        "worker",
        [
            str(VENV_BIN / "celery"),
            "-A",
            "homepot",
            "worker",
            "-c",
            "2",
            "-n",
            f"worker@{host.name}",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
        ],
    )
    beat = [
        str(VENV_BIN / "celery"),
        *("-A", "homepot", "beat", "--loglevel=INFO"),
        *("--schedule", str(cluster.workdir / f"beat-{host.name}")),
    ]
    cluster.start(host, "beat", supervised(beat))
    cluster.start(host, "bridge", supervised([*manage, "mqtt_bridge", "--client-id", f"bridge-{host.name}"]))


def supervised(command: list[str]) -> list[str]:
    """`command` started again a second after it exits, as systemd's Restart=always or
    compose's restart policy do: beat stops when it loses its lock or Redis, the bridge
    when the database stays away for its retries; both are meant to be restarted."""
    return ["sh", "-c", 'while :; do "$@"; sleep 1; done', "supervised", *command]


def write_haproxy(cluster: Cluster, app_hosts: list[Host], per_server: int) -> Path:
    # maxconn: at most as many requests per host as its gunicorn serves at once; the rest wait
    # in HAProxy's queue, so a health check is never stuck behind a backlog in gunicorn.
    servers = "\n".join(f"    server {h.name} {h.ip}:8000" for h in app_hosts)
    path = cluster.workdir / "haproxy.cfg"
    path.write_text(
        HAPROXY_CFG.format(
            lb_ip=LB_IP,
            servers=servers,
            per_server=per_server,
            server_checks=SERVER_CHECKS,
            server_timeout=HAPROXY_SERVER_TIMEOUT,
        )
    )
    return path


# Connection failures to a dead host are retried on another (redispatch); a request already
# sent to a host that dies is not (it may have been applied): that is the error rate reported.
# Health: /healthz every second, with time to answer on a busy machine (a slow answer is no
# reason to take a host out); connection errors to real traffic take a host out at once
# (observe layer4), which is what a killed or cut-off host gives.
HAPROXY_SERVER_TIMEOUT = 15
SERVER_CHECKS = "check inter 2s fall 3 rise 2 observe layer4 error-limit 2 on-error mark-down"
HAPROXY_CFG = """global
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server {server_timeout}s
    timeout check 10s
    timeout queue 30s
    retries 2
    option redispatch 1
    option httpchk GET /healthz
frontend web
    bind {lb_ip}:80
    default_backend app
backend app
    balance roundrobin
    default-server maxconn {per_server} {server_checks}
{servers}
"""


def reload_lb(cluster: Cluster, lb: Host, app_hosts: list[Host], per_server: int) -> None:
    old = lb.processes.pop("haproxy", None)
    if old is not None:
        os.killpg(old.pid, signal.SIGTERM)
        old.wait(timeout=10)
    cluster.start(lb, "haproxy", ["haproxy", "-db", "-f", str(write_haproxy(cluster, app_hosts, per_server))])
    wait_tcp(cluster, lb, LB_IP, 80)


def wait_healthy(cluster: Cluster, lb: Host, timeout: float = 120) -> None:
    probe = (
        "import urllib.request, sys; "
        f"sys.exit(urllib.request.urlopen('http://{LB_IP}/healthz', timeout=3).status != 200)"
    )
    deadline = time.monotonic() + timeout
    while cluster.ns_run(lb.ns, sys.executable, "-c", probe, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no app host became healthy (logs: {cluster.workdir}/logs)")
        time.sleep(0.5)


# --- load: an asyncio HTTP client for many virtual terminals over few sockets ----------------


class KeepAlive:
    """One HTTP/1.1 keep-alive connection to the load balancer, one request at a time.

    Thousands of virtual terminals share a few of these: what the servers see is the
    requests, not a socket per terminal (which would cost the load host more than the app
    hosts). A request sent on a connection the other side had already closed (idle
    keep-alive timeout) is sent again on a fresh one only when nothing of an answer came
    back, so a request is never applied twice because of the client."""

    def __init__(self, ip: str, port: int = 80):
        self.ip, self.port = ip, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, secret: str, body: bytes = b"") -> tuple[int, bytes]:
        fresh = self.writer is None
        for _ in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, self.port), 5
                )
            try:
                return await self._exchange(method, path, secret, body)
            except _StaleConnection:
                self.close()
                if fresh:
                    raise ConnectionError("closed before answering") from None
                fresh = True
            except BaseException:
                self.close()
                raise
        raise ConnectionError("unreachable")

    async def _exchange(self, method, path, secret, body) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.ip}\r\nAuthorization: Device {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await asyncio.wait_for(self.reader.readline(), 35)
        if not status_line:
            raise _StaleConnection
        length, close = 0, False
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 35)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await asyncio.wait_for(self.reader.readexactly(length), 35) if length else b""
        if close:
            self.close()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _StaleConnection(Exception):
    pass


class Pool:
    """`size` keep-alive connections taking requests from one queue; at most `size` requests
    in flight, the rest wait here (not in HAProxy's queue, whose timeout would turn load
    this machine cannot carry into 503s)."""

    def __init__(self, ip: str, size: int):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.busy = 0
        self.workers = [asyncio.create_task(self._work(KeepAlive(ip))) for _ in range(size)]

    async def _work(self, connection: KeepAlive) -> None:
        while True:
            method, path, secret, body, future = await self.queue.get()
            if future.cancelled():
                continue
            self.busy += 1
            started = time.time()
            try:
                status, payload = await connection.request(method, path, secret, body)
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
                status, payload = 0, b""
            self.busy -= 1
            if not future.cancelled():
                future.set_result((status, payload, started))

    def call(self, method: str, path: str, secret: str, body: bytes = b"") -> asyncio.Future:
        """A future of (status, body, when the request went out): 0 for no answer."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((method, path, secret, body, future))
        return future

    def backlog(self) -> int:
        return self.queue.qsize()

    def free(self) -> int:
        return len(self.workers) - self.busy - self.queue.qsize()

    def close(self) -> None:
        for worker in self.workers:
            worker.cancel()


HEARTBEAT = "/api/v1/agent/heartbeat"


async def _heartbeat_load(
    ip: str, credentials: dict, rate: float, duration: float, out: Path, connections: int
) -> dict:
    """Open loop: `rate` heartbeats a second are offered, round the devices, over
    `connections` keep-alive connections. One line per answer (sent-at, device, status) so
    the checker knows what was acknowledged and when. A heartbeat offered when every
    connection is busy (the servers, or this process, cannot keep up) is not sent but
    counted: queueing it would only delay every later one. So the report says offered vs
    sent vs answered 2xx."""
    devices = sorted(credentials)
    pool = Pool(ip, connections)
    lines: list[str] = []
    counts = {"offered": 0, "not_sent_no_free_connection": 0, "sent": 0, "answered_2xx": 0, "failed": 0}
    pending: set = set()

    async def one(device_id: str) -> None:
        status, _, sent_at = await pool.call("POST", HEARTBEAT, credentials[device_id], b"{}")
        counts["sent"] += 1
        counts["answered_2xx" if 200 <= status < 300 else "failed"] += 1
        lines.append(f"{sent_at:.6f} {device_id} {status}\n")

    started = time.time()
    stop = out.with_suffix(".stop")
    while time.time() - started < duration and not stop.exists():
        due = started + counts["offered"] / rate
        await asyncio.sleep(max(0.0, due - time.time()))
        counts["offered"] += 1
        if pool.free() <= 0:
            counts["not_sent_no_free_connection"] += 1
        else:
            task = asyncio.create_task(one(devices[counts["offered"] % len(devices)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if len(lines) > 500:
            with out.open("a") as f:
                f.writelines(lines)
            lines.clear()
    elapsed = time.time() - started
    await asyncio.gather(*pending)
    pool.close()
    with out.open("a") as f:
        f.writelines(lines)
    return {
        **counts,
        "seconds": round(elapsed, 1),
        "offered_per_second": round(counts["offered"] / elapsed, 1),
        "answered_2xx_per_second": round(counts["answered_2xx"] / elapsed, 1),
    }


async def _closed_loop(ip: str, credentials: dict, connections: int, duration: float) -> dict:
    """Capacity: `connections` keep-alive clients, each sending its next heartbeat as soon
    as the last is answered."""
    secrets_list = list(credentials.values())
    counts = {"ok": 0, "failed": 0}
    deadline = time.monotonic() + duration

    async def client(k: int) -> None:
        connection, i = KeepAlive(ip), k
        while time.monotonic() < deadline:
            try:
                secret = secrets_list[i % len(secrets_list)]
                status, _ = await connection.request("POST", HEARTBEAT, secret, b"{}")
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
                status = 0
            counts["ok" if 200 <= status < 300 else "failed"] += 1
            i += connections
        connection.close()

    started = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(connections)))
    elapsed = time.monotonic() - started
    return {**counts, "per_second": round(counts["ok"] / elapsed, 1)}


class PollSchedule:
    """When each virtual terminal polls next. After a poll that went out, its interval
    (+-25 %); after one that was skipped (the servers behind) or failed (no answer, an error
    status, its ack or result not taken), a short backoff: `first` s, doubled for each
    failure in a row, at most `cap` (and never more than the interval), each drawn between
    half and all of it so that terminals that failed together do not come back together.
    A real terminal does the same: one that waited a whole interval after a failed poll
    would leave its work undone for minutes."""

    FIRST_SECONDS, CAP_SECONDS = 2.0, 60.0

    def __init__(self, devices, interval: float, rng: random.Random):
        self.interval, self.rng = interval, rng
        self.first, self.cap = min(self.FIRST_SECONDS, interval), min(self.CAP_SECONDS, interval)
        self.failures: dict[str, int] = {}
        self.next_at: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []
        now = time.monotonic()
        for device in devices:
            self._at(device, now + rng.uniform(0, interval))

    def _at(self, device: str, at: float) -> None:
        self.next_at[device] = at
        heapq.heappush(self.heap, (at, device))

    def due(self, now: float) -> list[str]:
        devices = []
        while self.heap and self.heap[0][0] <= now:
            at, device = heapq.heappop(self.heap)
            # A retry scheduled since replaced this entry (one live entry per terminal).
            if self.next_at.get(device) == at:
                devices.append(device)
        return devices

    def seconds_to_next(self, now: float) -> float:
        return self.heap[0][0] - now if self.heap else 0.2

    def went_out(self, device: str) -> None:
        self._at(device, time.monotonic() + self.interval * self.rng.uniform(0.75, 1.25))

    def succeeded(self, device: str) -> None:
        self.failures.pop(device, None)

    def retry_soon(self, device: str) -> float:
        failures = self.failures[device] = self.failures.get(device, 0) + 1
        delay = min(self.cap, self.first * 2 ** (failures - 1)) * self.rng.uniform(0.5, 1.0)
        self._at(device, time.monotonic() + delay)
        return delay


async def _poll_terminals(
    ip: str, credentials: dict, interval: float, work: float, connections: int, stop: Path
) -> dict:
    """HTTP-polling terminals, as many as `credentials` names, over `connections` keep-alive
    connections: each polls its commands every `interval` s (first polls spread over one
    interval; retried soon after a skipped or failed one, see PollSchedule), acknowledges
    work it is offered as `sent`, and reports it completed `work` s later. A delivery offered
    as `sent` again after this terminal's acknowledgement got a 2xx is counted in
    `sent_again` (a push repeated: must stay 0). It answers what is still `acknowledged`
    again only when its own report did not get through."""
    pool = Pool(ip, connections)
    stats = {
        "terminals": len(credentials),
        "polls": 0,
        "acknowledged": 0,
        "completed": 0,
        "sent_again": 0,
        "errors": 0,
        "errors_by_status": {},
        "polls_skipped_servers_behind": 0,
        "retries": 0,
        "longest_retry_wait_seconds": 0.0,
    }
    acked: set = set()
    reported: set = set()
    working: set = set()
    rng = random.Random(0)  # noqa: S311 - simulation
    schedule = PollSchedule(sorted(credentials), interval, rng)
    tasks: set = set()

    def spawn(coroutine) -> None:
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def failed(device_id: str, status: int | None) -> None:
        if status is not None:
            stats["errors"] += 1
            by_status = stats["errors_by_status"]
            by_status[str(status)] = by_status.get(str(status), 0) + 1
        stats["retries"] += 1
        wait = schedule.retry_soon(device_id)
        stats["longest_retry_wait_seconds"] = round(max(stats["longest_retry_wait_seconds"], wait), 1)

    async def finish(device_id: str, secret: str, delivery: int) -> None:
        await asyncio.sleep(work * rng.uniform(0.5, 1.5))
        body = json.dumps({"status": "completed", "details": {"simulated": True}}).encode()
        status, _, _ = await pool.call("POST", f"/api/v1/agent/deliveries/{delivery}/result", secret, body)
        working.discard(delivery)
        if 200 <= status < 300:
            reported.add(delivery)
            stats["completed"] += 1
        else:
            # Still `acknowledged` on the server: the next poll offers it again to report.
            failed(device_id, status)

    async def poll(device_id: str) -> None:
        secret = credentials[device_id]
        status, payload, _ = await pool.call("GET", "/api/v1/agent/commands", secret)
        stats["polls"] += 1
        if not 200 <= status < 300:
            failed(device_id, status)
            return
        schedule.succeeded(device_id)
        for command in json.loads(payload)["commands"]:
            delivery = command["delivery_id"]
            # Two polls of one terminal may overlap on a slow server: one handles the work.
            if delivery in working or delivery in reported:
                continue
            working.add(delivery)
            if command["status"] == "sent":
                stats["sent_again"] += delivery in acked
                status, answer, _ = await pool.call(
                    "POST", f"/api/v1/agent/deliveries/{delivery}/ack", secret, b""
                )
                if not 200 <= status < 300 or json.loads(answer)["status"] == "cancelled":
                    working.discard(delivery)
                    if not 200 <= status < 300:
                        failed(device_id, status)
                    continue
                if delivery not in acked:
                    stats["acknowledged"] += 1
                acked.add(delivery)
            spawn(finish(device_id, secret, delivery))

    while not stop.exists():
        now = time.monotonic()
        for device_id in schedule.due(now):
            # Servers behind: this terminal does not queue behind hundreds of others; it
            # asks again soon.
            if pool.backlog() < 4 * connections:
                schedule.went_out(device_id)
                spawn(poll(device_id))
            else:
                stats["polls_skipped_servers_behind"] += 1
                failed(device_id, None)
        stats["backlog"] = pool.backlog()
        await asyncio.sleep(min(0.2, max(0.0, schedule.seconds_to_next(time.monotonic()))))
    for task in list(tasks):
        task.cancel()
    pool.close()
    return stats


def heartbeat_main(argv: list[str]) -> None:
    """Run inside the load host by the orchestrator:
    `multihost.py heartbeats LB_IP CREDENTIALS RATE DURATION OUT CONNECTIONS`,
    `... capacity LB_IP CREDENTIALS CONNECTIONS DURATION` or
    `... poll-terminals LB_IP CREDENTIALS INTERVAL WORK CONNECTIONS STOPFILE`; each prints its
    figures as one JSON line at the end."""
    mode, lb_ip, credentials = argv[0], argv[1], json.loads(Path(argv[2]).read_text())
    argv = argv[2:]
    if mode == "heartbeats":
        result = asyncio.run(
            _heartbeat_load(lb_ip, credentials, float(argv[1]), float(argv[2]), Path(argv[3]), int(argv[4]))
        )
    elif mode == "capacity":
        result = asyncio.run(_closed_loop(lb_ip, credentials, int(argv[1]), float(argv[2])))
    else:
        result = asyncio.run(
            _poll_terminals(lb_ip, credentials, float(argv[1]), float(argv[2]), int(argv[3]), Path(argv[4]))
        )
    print(json.dumps(result), flush=True)


# --- the scenario --------------------------------------------------------------------------------


def manage(cluster: Cluster, host: Host, *command, env=None) -> str:
    result = cluster.ns_run(
        host.ns, "env", *_env_args(env or cluster.env), sys.executable, "manage.py", *command, check=False
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _env_args(env: dict) -> list[str]:
    return ["-i", *(f"{k}={v}" for k, v in env.items())]


def django(cluster: Cluster, host: Host, code: str, env=None) -> str:
    return manage(cluster, host, "shell", "-c", code, env=env)


# A share of the fleet polls over HTTP (every n-th device), the rest is pushed to over MQTT.
SETUP_SQL = (
    "UPDATE devices_app_device SET push_channel = CASE WHEN id % {every} = 0 THEN 'poll' ELSE 'mqtt' END"
)

CREATE_JOB_CODE = """
import datetime, json
from jobs_app import services
from sites_app.models import Site
sites = list(Site.objects.order_by("pk"))
job = services.job_create(actor=None, site=sites[0], extra_sites=sites[1:], action="update_config",
                          ttl=datetime.timedelta(seconds={ttl}))
print(json.dumps({{"job": job.pk}}))
"""

CHECK_CODE = """
import json
from django.db import connection
from monitoring_app.seen_buffer import flush_seen
from monitoring_app.selectors import audit_chain_verify
flush_seen()
out = {{}}
with connection.cursor() as c:
    c.execute("SELECT status, count(*) FROM jobs_app_delivery WHERE job_id = %s GROUP BY status", [{job}])
    out["deliveries"] = dict(c.fetchall())
    c.execute("SELECT status FROM jobs_app_job WHERE id = %s", [{job}])
    out["job_status"] = c.fetchone()[0]
    c.execute("SELECT count(*) FROM jobs_app_delivery d JOIN devices_app_device v ON v.id = d.device_id "
              "WHERE d.job_id = %s AND v.push_channel = 'mqtt' AND d.acknowledged_at IS NOT NULL", [{job}])
    out["mqtt_acknowledged"] = c.fetchone()[0]
    c.execute("SELECT device_id, extract(epoch FROM last_seen) FROM devices_app_device "
              "WHERE last_seen IS NOT NULL")
    out["last_seen"] = {{d: float(t) for d, t in c.fetchall()}}
out["audit_chain_intact"] = audit_chain_verify().intact
print(json.dumps(out))
"""


def sql(cluster: Cluster, query: str) -> str:
    """One query on the database host, through its Unix socket (no Django start-up)."""
    db = cluster.hosts["db"]
    return cluster.ns_run(
        db.ns,
        str(pg_bin() / "psql"),
        "-h",
        str(cluster.workdir / "pg"),
        "-U",
        "postgres",
        "-d",
        "homepot",
        "-Atc",
        query,
    ).stdout.strip()


def issue_credentials(cluster: Cluster, path: Path) -> None:
    """A credential for every polling device, inserted in one COPY, and the simulator's
    credential file (device -> secret) that simulate_fleet reuses: issuing them one by one
    through the audited service would take most of the run."""
    rows = sql(cluster, "SELECT id, device_id FROM devices_app_device WHERE push_channel = 'poll'")
    store, lines = {}, []
    for row in rows.splitlines():
        pk, device_id = row.split("|")
        secret = "hpd_" + secrets.token_urlsafe(32)
        store[device_id] = secret
        lines.append(f"{pk}\t{secret[:12]}\t{hashlib.sha256(secret.encode()).hexdigest()}\tnow\n")
    db = cluster.hosts["db"]
    cluster.ns_run(
        db.ns,
        str(pg_bin() / "psql"),
        "-h",
        str(cluster.workdir / "pg"),
        "-U",
        "postgres",
        "-d",
        "homepot",
        "-c",
        "COPY devices_app_devicecredential (device_id, key_prefix, key_hash, created_at) FROM STDIN",
        input="".join(lines),
    )
    path.write_text(json.dumps(store))
    path.chmod(0o600)


def beat_leaders(cluster: Cluster) -> dict[str, float]:
    """App host -> when its beat took the lead (seconds since the epoch), from the logs."""
    leaders = {}
    for log in (cluster.workdir / "logs").glob("app*-beat.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "beat: Acquired lock" in line:
                stamp = line[1:24]
                leaders[log.name.split("-")[0]] = time.mktime(
                    time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")
                ) + float("0." + stamp[20:23])
    return leaders


def first_send_after(cluster: Cluster, host_name: str, after: float) -> float | None:
    log = cluster.workdir / "logs" / f"{host_name}-beat.log"
    for line in log.read_text(errors="replace").splitlines():
        if "Sending due task" in line:
            stamp = line[1:24]
            at = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float("0." + stamp[20:23])
            if at > after:
                return at
    return None


def scenario(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="homepot-multihost-"))
    workdir.chmod(0o755)
    (workdir / "logs").mkdir()
    tag = args.tag
    use_subnet(subnet_for(tag, subnets_in_use()))
    cluster = Cluster(workdir, tag)
    report: dict = {
        "devices": args.devices,
        "app_hosts": args.app_hosts,
        "workdir": str(workdir),
        "tag": tag,
        "subnet": f"{SUBNET}.0/24",
    }
    timings: dict = report.setdefault("seconds", {})
    t0 = time.monotonic()
    try:
        cluster.create_switch()
        db = cluster.add_host("db", DB_IP)
        lb = cluster.add_host("lb", LB_IP)
        load = cluster.add_host("load", LOAD_IP)
        apps = [cluster.add_host(f"app{n}", app_ip(n)) for n in range(1, args.app_hosts + 1)]
        start_database_host(cluster, db)
        cluster.env = app_env(args)
        direct = {**cluster.env, "DATABASE_URL": f"postgres://postgres@{DB_IP}:5432/homepot"}
        cluster.ns_run(
            db.ns, "runuser", "-u", "postgres", "--", str(pg_bin() / "createdb"), "-h", DB_IP, "homepot"
        )
        manage(cluster, load, "migrate", "--no-input", "-v", "0", env=direct)
        sites = max(1, args.devices // args.devices_per_site)
        manage(
            cluster,
            load,
            "create_fleet",
            "--sites",
            str(sites),
            "--devices-per-site",
            str(args.devices_per_site),
            "-v",
            "0",
            env=direct,
        )
        sql(cluster, SETUP_SQL.format(every=max(1, round(1 / args.poll_share))))
        creds = workdir / "credentials.json"
        issue_credentials(cluster, creds)
        devices = sites * args.devices_per_site
        report["devices"] = devices
        timings["setup"] = round(time.monotonic() - t0, 1)

        for host in apps:
            start_app_host(cluster, host, args)
        reload_lb(cluster, lb, apps, args.web_workers * 4)
        wait_healthy(cluster, lb)

        # Capacity first, with nothing else running: heartbeats a second through the load
        # balancer with 1, 2, ... N app hosts behind it.
        if args.throughput:
            report["throughput"] = measure_throughput(cluster, lb, load, apps, creds, args)

        # Terminals: the polling share through the load balancer, the rest on the broker.
        base = ["simulate_fleet", "--devices", str(devices), "--credentials-file", str(creds)]
        poll_stop = workdir / "poll-terminals.stop"
        cluster.start(
            load,
            "poll-terminals",
            [
                sys.executable,
                __file__,
                "poll-terminals",
                LB_IP,
                str(creds),
                str(args.poll_interval),
                "1",
                str(args.connections),
                str(poll_stop),
            ],
        )
        mqtt = cluster.start(
            load,
            "mqtt-terminals",
            [sys.executable, "manage.py", *base, "--channel", "mqtt", "--work-seconds", "1"],
        )
        wait_for_log(workdir / "logs" / "load-mqtt-terminals.log", "Simulating", 600)

        # Heartbeats at the fleet's rate (DEVICES a minute), through the load balancer.
        heartbeat_log = workdir / "heartbeats.txt"
        rate = devices / 60 * args.heartbeat_scale
        # Until told to stop (a file beside its output), at most this long.
        duration = args.job_timeout + args.kill_after + args.revive_after + args.settle
        cluster.start(
            load,
            "heartbeats",
            [
                sys.executable,
                __file__,
                "heartbeats",
                LB_IP,
                str(creds),
                str(rate),
                str(duration),
                str(heartbeat_log),
                str(args.connections),
            ],
        )
        job = json.loads(
            django(cluster, load, CREATE_JOB_CODE.format(ttl=args.ttl)).strip().splitlines()[-1]
        )["job"]
        job_started = time.monotonic()

        time.sleep(args.kill_after)
        leaders = beat_leaders(cluster)
        leader_name = max(leaders, key=leaders.get) if leaders else apps[0].name
        killed_at = time.time()
        report["fault"] = inject(cluster, args.fault, leader_name, leaders)
        time.sleep(args.revive_after)
        new_leaders = {h: t for h, t in beat_leaders(cluster).items() if t > killed_at and h != leader_name}
        restore(cluster, args.fault, leader_name, args)
        revived_at = time.time()
        report["revived_after_seconds"] = round(revived_at - killed_at, 1)
        if new_leaders:
            taker = min(new_leaders, key=new_leaders.get)
            sent = first_send_after(cluster, taker, killed_at)
            report["beat_failover"] = {
                "to": taker,
                "lock_taken_after_seconds": round(new_leaders[taker] - killed_at, 1),
                "first_send_after_seconds": round(sent - killed_at, 1) if sent else None,
            }

        # The job runs to its end (every delivery final), then the checks.
        final = wait_job_final(cluster, load, job, args.job_timeout)
        report["job_seconds"] = round(time.monotonic() - job_started, 1)
        # Heartbeats go on --settle seconds past the revival (and past the job's end).
        time.sleep(max(0.0, revived_at + args.settle - time.time()))
        heartbeat_log.with_suffix(".stop").touch()
        poll_stop.touch()
        for name in ("heartbeats", "poll-terminals"):
            cluster.hosts["load"].processes[name].wait(timeout=120)
        os.killpg(mqtt.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            mqtt.wait(timeout=30)
        report["load"] = {
            "heartbeats": _last_json(workdir / "logs" / "load-heartbeats.log"),
            "poll_terminals": _last_json(workdir / "logs" / "load-poll-terminals.log"),
        }
        state = json.loads(django(cluster, load, CHECK_CODE.format(job=job)).strip().splitlines()[-1])
        report.update(checks(state, final, heartbeat_log, workdir, killed_at, revived_at, devices, report))
        # Periodic work goes on after the fault: some beat sends once it is repaired.
        resumed = any(sends_after(cluster, h.name, revived_at) for h in apps)
        report["checks"]["beat_sends_after_repair"] = resumed
        if args.fault == "partition-leader":
            report["checks"]["old_leader_sent_nothing_while_another_led"] = not sends_after(
                cluster, leader_name, min(new_leaders.values()) if new_leaders else killed_at
            )
        timings["total"] = round(time.monotonic() - t0, 1)
        return report
    finally:
        cluster.close()
        if args.keep_logs:
            print(f"logs kept in {workdir}/logs", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- faults --------------------------------------------------------------------------------------

FAULTS = ("host", "partition-leader", "pgbouncer", "redis")


def inject(cluster: Cluster, fault: str, leader: str, leaders: dict) -> dict:
    """Break one thing mid-run: `host` kills every process of the beat leader's app host
    (SIGKILL) and cuts its network; `partition-leader` only cuts it (the processes live on,
    unreachable); `pgbouncer` and `redis` SIGKILL that server on the database host."""
    if fault in ("host", "partition-leader"):
        victim = cluster.hosts[leader]
        cluster.cut(victim)
        killed = cluster.kill_host(victim) if fault == "host" else 0
        return {"kind": fault, "host": leader, "was_beat_leader": leader in leaders, "processes": killed}
    process = cluster.hosts["db"].processes.pop(fault)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    return {"kind": fault, "host": "db"}


def restore(cluster: Cluster, fault: str, leader: str, args) -> None:
    if fault in ("host", "partition-leader"):
        victim = cluster.hosts[leader]
        cluster.reconnect(victim)
        if fault == "host":
            start_app_host(cluster, victim, args)
        return
    db = cluster.hosts["db"]
    if fault == "pgbouncer":
        start_pgbouncer(cluster, db)
        wait_tcp(cluster, db, DB_IP, 6432)
    else:
        start_redis(cluster, db)
        wait_tcp(cluster, db, DB_IP, 6379)


def sends_after(cluster: Cluster, host_name: str, after: float) -> list[str]:
    """The 'Sending due task' lines `host_name`'s beat logged after `after`."""
    lines = []
    log = cluster.workdir / "logs" / f"{host_name}-beat.log"
    for line in log.read_text(errors="replace").splitlines():
        if "Sending due task" in line and _log_time(line) > after:
            lines.append(line)
    return lines


def _log_time(line: str) -> float:
    stamp = line[1:24]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float("0." + stamp[20:23])


def _last_json(log: Path) -> dict:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def wait_for_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"'{text}' not in {path.name} after {timeout} s")
        time.sleep(0.5)


def wait_job_final(cluster: Cluster, load: Host, job: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = sql(cluster, f"SELECT status FROM jobs_app_job WHERE id = {int(job)}")  # noqa: S608 (a number)
        if status in ("completed", "failed", "cancelled", "paused") or time.monotonic() > deadline:
            return status
        time.sleep(3)


def measure_throughput(cluster, lb, load, apps, creds, args) -> dict:
    """Heartbeats a second through the load balancer with the first k app hosts behind it."""
    figures = {}
    for k in range(1, len(apps) + 1):
        reload_lb(cluster, lb, apps[:k], args.web_workers * 4)
        wait_healthy(cluster, lb)
        time.sleep(2)
        began = time.time()
        out = cluster.ns_run(
            load.ns,
            "env",
            *_env_args(cluster.env),
            sys.executable,
            __file__,
            "capacity",
            LB_IP,
            str(creds),
            str(args.connections),
            str(args.throughput),
        )
        figures[f"{k}_app_hosts"] = json.loads(out.stdout.strip().splitlines()[-1])
        # When (seconds since the epoch), to match CPU readings (bench/netns_cpu.py --timeline).
        figures[f"{k}_app_hosts"]["window"] = [round(began, 1), round(time.time(), 1)]
    reload_lb(cluster, lb, apps, args.web_workers * 4)
    wait_healthy(cluster, lb)
    return figures


def checks(state, final, heartbeat_log, workdir, killed_at, revived_at, devices, report) -> dict:
    acked_by_device: dict[str, float] = {}
    by_status: dict[int, int] = {}
    sent = ok = failed = failed_while_down = sent_while_down = failed_in_flight = ok_after_repair = 0
    last_failure = 0.0
    for line in heartbeat_log.read_text().splitlines():
        at, device_id, status = line.split()
        at, status = float(at), int(status)
        sent += 1
        by_status[status] = by_status.get(status, 0) + 1
        down = killed_at <= at <= revived_at + 5
        sent_while_down += down
        if 200 <= status < 300:
            ok += 1
            ok_after_repair += at >= revived_at
            acked_by_device[device_id] = max(acked_by_device.get(device_id, 0), at)
        else:
            failed += 1
            last_failure = max(last_failure, at)
            failed_while_down += down
            # Sent to the host just before it died, answered 504 by the load balancer after
            # its server timeout: the requests a dead host takes with it.
            failed_in_flight += killed_at - HAPROXY_SERVER_TIMEOUT <= at < killed_at
    lost = [d for d, at in acked_by_device.items() if state["last_seen"].get(d, 0) < at - 0.001]
    deliveries = state["deliveries"]
    unfinished = sum(n for s, n in deliveries.items() if s in ("pending", "sent", "acknowledged"))
    answered = {
        "poll": _last_json(workdir / "logs" / "load-poll-terminals.log"),
        "mqtt": _simulator_stats(workdir / "logs" / "load-mqtt-terminals.log"),
    }
    # The MQTT terminals count every deliver message (`received`) and the deliveries they
    # took (`acknowledged`; a repeat is acknowledged again but not taken: `repeated`). Pushed
    # once: received = taken = stored as acknowledged; acted on once: taken = stored, even
    # when a repeat got through. (A polling terminal asks again for work whose result did not
    # get through; that is by design.)
    mqtt_acks = answered["mqtt"].get("acknowledged", -1)
    mqtt_received = answered["mqtt"].get("received", mqtt_acks)
    result = {
        "job_status": final,
        "deliveries": deliveries,
        "terminal_answers": answered,
        "heartbeats": {
            "sent": sent,
            "answered_2xx": ok,
            "failed": failed,
            "sent_while_host_down": sent_while_down,
            "failed_while_host_down": failed_while_down,
            "error_rate_while_host_down": round(failed_while_down / max(sent_while_down, 1), 4),
            "failed_in_flight_at_kill": failed_in_flight,
            "acknowledged_but_lost": len(lost),
            "answered_2xx_after_repair": ok_after_repair,
            # From the repair to the last heartbeat that failed (negative: none failed after it).
            "last_failure_after_repair_seconds": round(last_failure - revived_at, 1) if failed else None,
            # 0: no answer (connection refused or cut, timeout); 503: a dependency away.
            "by_status": {str(k): v for k, v in sorted(by_status.items())},
        },
        "audit_chain_intact": state["audit_chain_intact"],
    }
    result["checks"] = {
        "every_delivery_final": unfinished == 0 and sum(deliveries.values()) == devices,
        # Final is not enough: a delivery timed out or failed is work a terminal never did.
        "every_delivery_completed": deliveries.get("completed", 0) == devices,
        "job_completed": final == "completed",
        "each_push_received_once": mqtt_received == mqtt_acks == state["mqtt_acknowledged"]
        and answered["poll"].get("sent_again", -1) == 0,
        "each_delivery_acted_on_once": mqtt_acks == state["mqtt_acknowledged"],
        # A dependency away is a 503 (or a connection error), never a 500.
        "no_500_answers": not by_status.get(500),
        "no_acknowledged_heartbeat_lost": not lost and ok > 0,
        # Only a fault of the leader's host moves the lead.
        "beat_failed_over": bool(report.get("beat_failover", {}).get("first_send_after_seconds"))
        or report["fault"]["kind"] not in ("host", "partition-leader"),
        "audit_chain_intact": state["audit_chain_intact"],
    }
    return result


def _simulator_stats(log: Path) -> dict:
    """simulate_fleet's final counts; when it was stopped before printing them (closing
    hundreds of broker connections can outlast the wait), the sum of its per-minute lines
    ("12:00:01 last minute: 7755 acknowledged, 7406 completed")."""
    stats, minutes = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"acknowledged"' in line:
            stats = json.loads(line)
        elif "last minute:" in line:
            for part in line.split("last minute:", 1)[1].split(","):
                number, _, name = part.strip().partition(" ")
                if number.isdigit():
                    minutes[name] = minutes.get(name, 0) + int(number)
    return stats or ({"acknowledged": 0, **minutes, "from": "per-minute lines"} if minutes else {})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--app-hosts", type=int, default=3)
    parser.add_argument(
        "--devices", type=int, default=10_000, help="100,000 is the target; see docs/performance.md"
    )
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers per app host")
    parser.add_argument("--poll-share", type=float, default=0.5, help="share of devices polling over HTTP")
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, help="seconds between a terminal's polls"
    )
    parser.add_argument("--heartbeat-scale", type=float, default=1.0, help="x (devices per minute)")
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds after the job starts")
    parser.add_argument("--revive-after", type=float, default=30.0, help="seconds after the kill")
    parser.add_argument("--settle", type=float, default=15.0, help="heartbeats go on this long after")
    parser.add_argument("--ttl", type=int, default=120, help="the job's delivery deadline, seconds")
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        help="seconds to wait for the job to end (default: its --ttl plus a minute, by when the "
        "server has ended every delivery itself: completed, or timed out and the job failed)",
    )
    parser.add_argument("--beat-lock-seconds", type=int, default=10)
    parser.add_argument("--throughput", type=float, default=0, help="measure N seconds per app-host count")
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="keep-alive connections of each load generator (and closed-loop clients for --throughput)",
    )
    parser.add_argument(
        "--fault",
        choices=FAULTS,
        default="host",
        help="what breaks mid-run: the beat leader's app host killed and cut off (host), only "
        "cut off (partition-leader), or PgBouncer or Redis killed on the database host",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--tag",
        type=_tag,
        default=f"hpmh{secrets.token_hex(2)}",
        help="names of this run's namespaces and links start with it, and its subnet is derived "
        "from it (default hpmh + 4 random hex digits; at most 8 letters or digits)",
    )
    parser.add_argument("--cleanup", action="store_true", help="only remove what the run --tag left")
    args = parser.parse_args(argv)
    if args.job_timeout is None:
        args.job_timeout = args.ttl + JOB_END_SLACK_SECONDS
    return args


# After a job's deadline the beat tick (10 s) times out what is unfinished and the rollup ends
# the job; a minute covers a few ticks on a loaded machine.
JOB_END_SLACK_SECONDS = 60


def slowest_poll_seconds(args) -> float:
    """When the last polling terminal has asked for its work at the latest: its first poll
    (up to 1.25 intervals), a fault's whole window if that poll fell into it, then one
    retry at the backoff's cap. A --ttl shorter than this times deliveries out by design."""
    cap = min(PollSchedule.CAP_SECONDS, args.poll_interval)
    return 1.25 * args.poll_interval + args.kill_after + args.revive_after + cap


def _tag(text: str) -> str:
    # A link's name is tag + host name (+ "p" for its peer) in 15 characters.
    if not re.fullmatch(r"[a-z0-9]{1,8}", text):
        raise argparse.ArgumentTypeError("1 to 8 lowercase letters or digits")
    return text


def _interrupted(signum, frame):
    # SIGTERM ends the run like Ctrl-C: through the finally blocks that remove everything.
    raise KeyboardInterrupt


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("heartbeats", "capacity", "poll-terminals"):
        heartbeat_main(sys.argv[1:])
        return 0
    args = parse_args()
    if args.cleanup:
        leftover_cleanup(args.tag)
        return 0
    reasons = missing_tools()
    if reasons:
        print("cannot run here: " + "; ".join(reasons), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.ttl < slowest_poll_seconds(args):
        print(
            f"warning: --ttl {args.ttl} is shorter than the {slowest_poll_seconds(args):.0f} s the "
            "slowest polling terminal may need; its delivery would time out (and fail the checks)",
            file=sys.stderr,
        )
    report = scenario(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(report.get("checks", {"ran": False}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
