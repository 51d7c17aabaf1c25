"""What the benchmarks share: Django pointed at a code root and a scratch database, gunicorn
started and stopped, and the CPU time of processes read from /proc.

A bench that compares two versions of HOMEPOT runs the older one from a `git archive` in another
directory, so `django_setup` takes the code root to import from; the database is always named,
never taken from a developer's `.env` (HOMEPOT_ENV_FILE is emptied), so a bench cannot touch
another database by accident.
"""

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def django_env(database: str, **extra: str) -> dict[str, str]:
    """The environment that points HOMEPOT at `database` on the local PostgreSQL."""
    return {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only",
        "HOMEPOT_ENV_FILE": "",
        **extra,
    }


def django_setup(root: str | Path, database: str, **extra_env: str) -> None:
    """Django of the code in `root`, in this process, on `database`. The working directory
    becomes `root` too: Celery's Django fix-up puts it first on sys.path."""
    root = str(root)
    sys.path.insert(0, root)
    os.chdir(root)
    os.environ.update(django_env(database, **extra_env), DJANGO_SETTINGS_MODULE="homepot.settings")
    import django

    django.setup()


# --- CPU time from /proc ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (a gunicorn master's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def children_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(child) for child in child_pids(pid))


# --- gunicorn ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    app: str,
    *,
    cwd: str | Path,
    workers: int,
    env: dict,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    ready_path: str = "/healthz",
    ready_seconds: float = 30,
) -> tuple[subprocess.Popen, int]:
    """gunicorn serving `app` from `cwd` with sync workers (the deployed setting), returned once
    `ready_path` answers at all; the port is a free one unless given."""
    port = port or free_port()
    server = subprocess.Popen(  # noqa: S603 (fixed arguments)
        [
            str(Path(sys.executable).with_name("gunicorn")),
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--backlog",
            "2048",
            "--log-level",
            "warning",
            *extra_args,
        ],
        cwd=str(cwd),
        env={**env, "PYTHONPATH": str(cwd)},
    )
    deadline = time.monotonic() + ready_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        if _answers(port, ready_path):
            return server, port
        time.sleep(0.1)
    server.kill()
    server.wait()
    raise RuntimeError(f"gunicorn {app} in {cwd} did not start")


def _answers(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        connection.getresponse()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def stop(server: subprocess.Popen, timeout: float = 60) -> None:
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def start_redis(port: int, *options: str, purpose: str = "bench") -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:`port` with `options` (persistence and the like),
    its files in a fresh temporary directory; returned once it accepts connections."""
    directory = tempfile.mkdtemp(prefix=f"bench-{purpose}-redis-")
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, *options],  # noqa: S607
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the {purpose} Redis on port {port} did not start")
