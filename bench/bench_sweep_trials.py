"""Sweep and alert evaluation trials on a kept 1,000,000-device database, before/after.

    python bench/bench_sweep_trials.py <code root> <database> prepare   # once per database
    python bench/bench_sweep_trials.py <code root> <database> trial     # repeat, alternating

`<code root>` is this checkout or an older one exported with `git archive` (each database
migrated by its own code). `prepare` makes every device online and seen at a fixed moment,
except every 20th site and 1 device in 1,000 (51,000 silent for an hour); `trial` times the
sweep, the sweep again, the alert evaluation past the offline threshold and again, then puts
the devices back and deletes the alerts, notifications and status changes it made (audit
rows stay: the trail is append-only). Buffered heartbeats use a key prefix of their own, so
no one else's buffer is flushed. The database is not dropped.

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
RESET_SQL = [
    "DELETE FROM monitoring_app_notification",
    "DELETE FROM monitoring_app_alert",
    "DELETE FROM monitoring_app_devicestatuschange",
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
    swept, out["sweep_ms"] = timed_ms(sweep_offline, now=T0)
    out["marked"] = swept.marked_offline
    _, out["sweep_again_ms"] = timed_ms(sweep_offline, now=T0 + datetime.timedelta(seconds=30))
    later = T0 + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS + 60)
    evaluated, out["evaluate_ms"] = timed_ms(alerts_evaluate, now=later)
    out["opened"] = len(evaluated.opened)
    _, out["evaluate_again_ms"] = timed_ms(alerts_evaluate, now=later + datetime.timedelta(seconds=30))
    with connection.cursor() as cursor:
        for sql in RESET_SQL:
            cursor.execute(sql)
    return out


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
