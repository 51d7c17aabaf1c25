"""What the audit chain's one global lock costs concurrent writers.

    python bench/bench_audit.py                       # 8 writers, 5 rounds of 4 s per mode, via the API
    python bench/bench_audit.py --via service --writers 8 --rounds 5 --seconds 4

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_audit; DROPPED),
     migrates it, and creates one site with one device per writer, and an admin;
  2. for each round, runs each mode in turn (the order rotates from round to round, so a
     slow moment of the machine does not always hit the same mode): `--writers` processes
     (forked, each with its own connection) start together on a barrier and, for
     `--seconds`, each changes the name of the device of ITS OWN site, over and over:
     `PATCH /api/v1/devices/<id>` through DRF's test client with a real bearer token
     (`--via api`), or device_update directly (`--via service`);
  3. prints the throughput (changes per second, all writers together) of each mode:
     median, min and max over the rounds, and the median relative to `none`.

The modes differ only in how the audit row of each change is written:
  chain     the product: audit_record, the chain's advisory lock taken last and held to commit
            (at the end of an outermost block the append's query commits too, and waits
            for the WAL flush after releasing the lock: its time includes the commit's);
  no-lock   the same row, hash and head read, without the lock (a chain that can fork: only a
            baseline for what the lock itself costs);
  none      no audit row at all (audit_record's insert replaced by a no-op).

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import (  # noqa: E402
    command_env,
    drop_database,
    machine,
    manage,
    recreate_database,
    setup_django,
)

MODES = ("chain", "no-lock", "none")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_audit", help="Scratch database (dropped!).")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="Length of one mode's run.")
    parser.add_argument("--via", choices=("api", "service"), default="api")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


def prepare(writers: int) -> tuple[list[str], str]:
    """One site and one device per writer, and an admin's API token."""
    from accounts.models import User
    from accounts.services import api_token_issue
    from devices_app.services import device_create
    from sites_app.services import site_create

    admin = User.objects.create(username="bench-admin", is_staff=True, is_superuser=True)
    device_ids = []
    for n in range(writers):
        site = site_create(actor=None, site_id=f"bench-audit-{n}", name=f"Bench site {n}")
        device = device_create(actor=None, site=site, device_id=f"bench-audit-pos-{n}", name="Till")
        device_ids.append(device.device_id)
    _, raw_key = api_token_issue(user=admin, name="bench")
    return device_ids, raw_key


def _set_mode(mode: str, spent: list[float]) -> None:
    # Runs in the forked writer only: the parent's code is left as it is. `spent` receives
    # the time each audit append took (for `chain`: waiting for the lock, reading the head,
    # inserting), the part of a change the modes differ in before the commit.
    from monitoring_app import services
    from monitoring_app.models import AuditLog

    if mode == "none":
        append = lambda entries, **kwargs: None  # noqa: E731
    elif mode == "chain":
        append = services._append_all
    else:

        def append_without_lock(entries, **kwargs):
            prev = AuditLog.objects.order_by("-id").values_list("row_hash", flat=True).first()
            prev = prev or services.GENESIS_HASH
            now = services.timezone.now()
            for entry in entries:
                entry.created_at, entry.prev_hash = now, prev
                entry.row_hash = prev = entry.compute_hash()
            AuditLog.objects.bulk_create(entries)

        append = append_without_lock

    def timed_append(entries, **kwargs):
        # kwargs: `last_in_transaction`, with which the chain's one-row append also commits
        # (and waits for its WAL flush): its time then includes the commit's.
        started = time.perf_counter()
        append(entries, **kwargs)
        spent.append(time.perf_counter() - started)

    services._append_all = timed_append


def writer(mode, via, device_id, raw_key, seconds, barrier, results):
    from django.db import connection

    from devices_app.models import Device
    from devices_app.services import device_update

    spent: list[float] = []
    _set_mode(mode, spent)
    if via == "api":
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        url = f"/api/v1/devices/{device_id}"

        def change(n):
            response = client.patch(url, {"name": f"Till {n}"}, format="json")
            assert response.status_code == 200, response.content
    else:
        from accounts.models import User

        admin = User.objects.get(username="bench-admin")
        device = Device.objects.get(device_id=device_id)

        def change(n):
            device_update(actor=admin, device=device, name=f"Till {n}")

    change(-1)  # connection, caches and imports warm before the clock starts
    spent.clear()
    barrier.wait()
    deadline = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < deadline:
        change(done)
        done += 1
    connection.close()
    results.put((done, spent))


def run_mode(mode, via, device_ids, raw_key, seconds) -> float:
    from django.db import connections

    connections.close_all()  # nothing shared with the forked writers
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(device_ids))
    results = context.Queue()
    processes = [
        context.Process(target=writer, args=(mode, via, device_id, raw_key, seconds, barrier, results))
        for device_id in device_ids
    ]
    for process in processes:
        process.start()
    answers = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a {mode} writer failed (exit code {process.exitcode})")
    total = sum(done for done, _ in answers)
    spent = [ms * 1000 for _, times in answers for ms in times]
    return total / seconds, spent


def main() -> None:
    args = parse_args()
    recreate_database(args.database)
    try:
        manage(command_env(args.database), "migrate", "--no-input", "-v", "0")
        setup_django(args.database)
        device_ids, raw_key = prepare(args.writers)
        runs: dict[str, list[float]] = {mode: [] for mode in MODES}
        appends: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_number in range(args.rounds):
            order = MODES[round_number % len(MODES) :] + MODES[: round_number % len(MODES)]
            for mode in order:
                rate, spent = run_mode(mode, args.via, device_ids, raw_key, args.seconds)
                runs[mode].append(rate)
                appends[mode].extend(spent)
            print(
                f"round {round_number + 1}: " + ", ".join(f"{mode} {runs[mode][-1]:.0f}/s" for mode in MODES),
                flush=True,
            )
    except SystemExit:
        raise
    except Exception:
        if not args.keep:
            drop_database(args.database)
        raise
    report(args, runs, appends)
    if not args.keep:
        drop_database(args.database)


def report(args, runs, appends) -> None:
    baseline = statistics.median(runs["none"])
    print(
        f"\n{args.writers} writers, each on its own site, via {args.via}, {args.rounds} rounds of "
        f"{args.seconds:g} s per mode (changes per second, all writers together):"
    )
    print(f"{'mode':<9} {'median':>8} {'min':>8} {'max':>8} {'vs none':>8}")
    summary = {}
    for mode in MODES:
        values = runs[mode]
        median = statistics.median(values)
        summary[mode] = {"median": median, "min": min(values), "max": max(values), "runs": values}
        print(f"{mode:<9} {median:8.0f} {min(values):8.0f} {max(values):8.0f} {median / baseline:8.0%}")
    print("\nTime of one audit append (ms; chain: lock wait + head read + insert), all changes:")
    print(f"{'mode':<9} {'p50':>8} {'p95':>8} {'max':>8}")
    for mode in MODES:
        values = sorted(appends[mode]) or [0.0]
        p50, p95 = values[len(values) // 2], values[int(len(values) * 0.95)]
        summary[mode]["append_ms"] = {"p50": p50, "p95": p95, "max": values[-1]}
        print(f"{mode:<9} {p50:8.2f} {p95:8.2f} {values[-1]:8.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": summary, "machine": machine()},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
