import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from monitoring_app import partitions


class Command(BaseCommand):
    help = (
        "Move the health history (health checks, status changes) of a plain table into day "
        "partitions, online: a short swap (the ingest writes into the partitioned table from "
        "then on), then the old rows copied newest first in batches, each its own transaction, "
        "then the old table dropped once every row is across. Interrupt and run again at any "
        "point: it resumes. Ends by creating the partitions ahead (as the hourly task does)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=50_000, help="Rows copied per transaction.")
        parser.add_argument(
            "--pause",
            type=float,
            default=0.0,
            help="Seconds between batches (less load).",
        )
        parser.add_argument(
            "--table",
            choices=[h.table for h in partitions.HISTORY_TABLES],
            action="append",
            help="Only this table (repeatable); default both.",
        )

    def handle(self, *args, batch_size, pause, table, **options):
        if connection.vendor != "postgresql":
            raise CommandError("Partitioning needs PostgreSQL; on SQLite the history stays in plain tables.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        chosen = [h for h in partitions.HISTORY_TABLES if not table or h.table in table]
        for history in chosen:
            self._partition(history, batch_size, pause)
        report = partitions.history_partitions_maintain()
        self.stdout.write(f"Partitions created ahead: {len(report.created)}.")

    def _partition(self, history, batch_size, pause):
        if partitions.history_table_swap(history):
            self.stdout.write(f"{history.table}: now partitioned; copying the old rows, newest first.")
        elif not partitions.is_partitioned(history.table):
            raise CommandError(f"{history.table} could not be partitioned.")
        copied, started = 0, time.monotonic()
        while batch := partitions.history_copy_batch(history, batch_size=batch_size):
            copied += batch
            rate = copied / max(time.monotonic() - started, 1e-6)
            self.stdout.write(f"{history.table}: {copied} rows copied ({rate:,.0f}/s)")
            if pause:
                time.sleep(pause)
        total = partitions.history_copy_finish(history)
        if total is None and partitions.supported() and self._old_left(history):
            raise CommandError(f"{history.table}: rows are still missing; run the command again.")
        self.stdout.write(self.style.SUCCESS(f"{history.table}: partitioned by day, old table gone."))

    @staticmethod
    def _old_left(history) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [history.unpartitioned])
            return cursor.fetchone()[0]
