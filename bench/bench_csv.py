#!/usr/bin/env python3
"""Benchmark the CSV import and export of devices on PostgreSQL (issue 14).

Drops and creates a scratch database (default `homepot_csv_bench`), migrates it, adds 2,000
sites, then times, as an admin would run them through the service the API and admin call:
  1. the preview (dry run) of a 100,000-device file (with --memory, again under tracemalloc: the
     most Python memory it held at any moment),
  2. its apply (100,000 creates: COPY into a temp table + one upsert, one audit row),
  3. the apply of the same file with 10 % of the rows changed (10,000 updates, 90,000 skips),
  4. the export of the 100,000 devices through the streamed CSV (keyset batches), with the
     process's peak memory before and after (it must stay flat).
The scratch database is dropped at the end unless --keep is given.

Usage (from the project root, PostgreSQL reachable as DATABASE_URL's server):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/bench_csv.py
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_csv_bench")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=2_000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--memory", action="store_true", help="Also measure the preview's peak memory (tracemalloc; slower)."
    )
    args = parser.parse_args()

    server = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    admin_url = urlunparse(server._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}"')
        conn.execute(f'CREATE DATABASE "{args.database}"')
    os.environ["DATABASE_URL"] = urlunparse(server._replace(path=f"/{args.database}"))
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from devices_app.imports import devices_import
    from devices_app.models import Device
    from devices_app.selectors import DEVICE_EXPORT_COLUMNS, device_export_rows
    from homepot.csv_export import csv_stream
    from sites_app.models import Site

    Site.objects.bulk_create(
        Site(site_id=f"bench-{n:05d}", name=f"Store {n}", timezone="UTC") for n in range(args.sites)
    )

    def file(changed_every: int = 0) -> str:
        lines = ["device_id,name,site_id,device_type,ip_address,mac_address,firmware_version"]
        for n in range(args.devices):
            firmware = "4.2.2" if changed_every and n % changed_every == 0 else "4.2.1"
            mac = f"02:CC:{n >> 24 & 255:02X}:{n >> 16 & 255:02X}:{n >> 8 & 255:02X}:{n & 255:02X}"
            ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            lines.append(
                f"till-{n:07d},Till {n},bench-{n % args.sites:05d},pos_terminal,{ip},{mac},{firmware}"
            )
        return "\n".join(lines) + "\n"

    first = file()
    print(f"file: {args.devices:,} rows, {len(first.encode()) / 1e6:.1f} MB; peak RSS {peak_mb():.0f} MB")

    started = time.monotonic()
    preview = devices_import(actor=None, data=first, dry_run=True)
    print(f"preview (dry run): {time.monotonic() - started:.1f} s  create={preview.create:,}")
    if args.memory:
        import tracemalloc

        # The upload as the API and the admin hand it over (bytes), under tracemalloc: the most
        # Python memory the import held at any moment beyond the upload itself.
        upload = first.encode()
        tracemalloc.start()
        devices_import(actor=None, data=upload, dry_run=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"preview (dry run): peak Python allocation {peak / 1e6:.1f} MB beyond the upload")
        del upload

    started = time.monotonic()
    applied = devices_import(actor=None, data=first, dry_run=False)
    print(f"apply (all creates): {time.monotonic() - started:.1f} s  create={applied.create:,}")
    assert Device.objects.count() == args.devices

    second = file(changed_every=10)
    started = time.monotonic()
    again = devices_import(actor=None, data=second, dry_run=False)
    print(
        f"apply (10 % changed): {time.monotonic() - started:.1f} s  "
        f"update={again.update:,} skip={again.skip:,}"
    )
    del first, second, preview, applied, again

    import gc
    import tracemalloc

    gc.collect()
    started = time.monotonic()
    size = 0
    for chunk in csv_stream(list(DEVICE_EXPORT_COLUMNS), device_export_rows(Device.objects.all())):
        size += len(chunk)
    print(f"export: {args.devices:,} rows, {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s")
    # Again under tracemalloc: the most Python memory the export held at any moment.
    tracemalloc.start()
    for _chunk in csv_stream(list(DEVICE_EXPORT_COLUMNS), device_export_rows(Device.objects.all())):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"export: peak Python allocation while streaming {peak / 1e6:.1f} MB (one keyset batch)")
    print(f"PostgreSQL {connection.cursor().connection.info.server_version}, Python {sys.version.split()[0]}")
    connection.close()
    if not args.keep:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{args.database}"')


if __name__ == "__main__":
    main()
