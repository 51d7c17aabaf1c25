"""Sweep and alert evaluation trials on a kept 1,000,000-device database, before/after.

    python bench/bench_sweep_trials.py <code root> <database> prepare   # once per database
    python bench/bench_sweep_trials.py <code root> <database> trial     # repeat, alternating

`<code root>` is this checkout or an older one exported with `git archive` (each database
migrated by its own code). `prepare` makes every device online and seen at a fixed moment,
except every 20th site and 1 device in 1,000 (51,000 silent for an hour); `trial` times the
sweep, the sweep again, the alert evaluation past the offline threshold and again, then puts
the devices back and deletes the alerts, notifications and status changes it made (audit
rows stay: the trail is append-only; alerts opened before T0, a database's history, stay
too). Buffered heartbeats use a key prefix of their own, so no one else's buffer is flushed.
The database is not dropped.

Each step prints its wall-clock ms, `<step>_db_cpu_ms` (CPU time of the PostgreSQL backend,
read from /proc: a local server only) and `<step>_py_cpu_ms` (this process's CPU time).

`SWEEP_T0=<ISO time>` makes the trials pretend it is that moment: for a database kept by
`bench_sweep.py --keep`, whose devices were last seen at its own "now" (its max(last_seen)),
so no second `prepare` (an UPDATE of every device) is needed.
"""

import datetime
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import django_setup  # noqa: E402

T0 = (
    datetime.datetime.fromisoformat(os.environ["SWEEP_T0"])
    if os.environ.get("SWEEP_T0")
    else datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
)

PREPARE_SQL = """UPDATE devices_app_device SET status = 'online', connectivity_changed_at = NULL,
    last_seen = CASE WHEN site_id %% 20 = 0 OR id %% 1000 = 1 THEN %(silent)s ELSE %(now)s END"""
# Only what the trial made (alerts opened, transitions from T0 on): a database given a
# history of closed alerts before T0 keeps it.
RESET_SQL = [
    "DELETE FROM monitoring_app_notification WHERE alert_id IN"
    " (SELECT id FROM monitoring_app_alert WHERE opened_at >= %(t0)s)",
    "DELETE FROM monitoring_app_alert WHERE opened_at >= %(t0)s",
    "DELETE FROM monitoring_app_devicestatuschange WHERE changed_at >= %(t0)s",
    "UPDATE devices_app_device SET status = 'online', connectivity_changed_at = NULL"
    " WHERE status = 'offline'",
    "VACUUM ANALYZE devices_app_device",
    "VACUUM ANALYZE monitoring_app_alert",
]


def setup(root: str, database: str) -> None:
    django_setup(root, database)
    from django.conf import settings

    settings.HOMEPOT_MONITORING_SEEN_KEY_PREFIX = f"bench-sweep-{uuid.uuid4().hex}:"


def timed_ms(function, **kwargs):
    start = time.perf_counter()
    result = function(**kwargs)
    return result, round((time.perf_counter() - start) * 1000)


def backend_cpu_ms() -> int | None:
    """CPU time (user + system) of this connection's PostgreSQL backend so far, from
    /proc/<pid>/stat (a local server only; None elsewhere): what a statement costs the
    server, much less sensitive to the machine's load than the wall clock."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the line
    return round(ticks * 1000 / os.sysconf("SC_CLK_TCK"))


def timed(out: dict, name: str, function, **kwargs):
    """Run `function`, noting its wall-clock ms, the backend's CPU ms and this process's CPU
    ms (the Python side: the evaluation's audit records) in `out`."""
    cpu_before, own_before = backend_cpu_ms(), time.process_time()
    result, out[f"{name}_ms"] = timed_ms(function, **kwargs)
    cpu_after = backend_cpu_ms()
    if cpu_before is not None and cpu_after is not None:
        out[f"{name}_db_cpu_ms"] = cpu_after - cpu_before
    out[f"{name}_py_cpu_ms"] = round((time.process_time() - own_before) * 1000)
    return result


def trial() -> dict:
    from django.conf import settings
    from django.db import connection

    from monitoring_app.alerts import alerts_evaluate
    from monitoring_app.models import MonitoringState
    from monitoring_app.sweep import sweep_offline

    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={
            "last_sweep_at": T0 - datetime.timedelta(seconds=30),
            "resumed_at": T0 - datetime.timedelta(days=1),
        },
    )
    out = {}
    swept = timed(out, "sweep", sweep_offline, now=T0)
    out["marked"] = swept.marked_offline
    timed(out, "sweep_again", sweep_offline, now=T0 + datetime.timedelta(seconds=30))
    later = T0 + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS + 60)
    evaluated = timed(out, "evaluate", alerts_evaluate, now=later)
    out["opened"] = len(evaluated.opened)
    timed(out, "evaluate_again", alerts_evaluate, now=later + datetime.timedelta(seconds=30))
    reset(connection)
    return out


def reset(connection) -> None:
    """Put the devices back online and delete the alerts, notifications and transitions the
    trial made (audit rows stay)."""
    with connection.cursor() as cursor:
        for sql in RESET_SQL:
            cursor.execute(sql, {"t0": T0} if "%(t0)s" in sql else None)


def main() -> None:
    root, database, action = sys.argv[1], sys.argv[2], sys.argv[3]
    setup(os.path.abspath(root), database)
    if action == "prepare":
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(PREPARE_SQL, {"now": T0, "silent": T0 - datetime.timedelta(hours=1)})
            cursor.execute("VACUUM ANALYZE devices_app_device")
        print("prepared")
        return
    print(json.dumps(trial()))


if __name__ == "__main__":
    main()
