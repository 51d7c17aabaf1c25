import time

from django.core.management.base import BaseCommand, CommandError

from monitoring_app.checkpoints import CheckpointError, checkpoints_read
from monitoring_app.selectors import audit_chain_verify


class Command(BaseCommand):
    help = (
        "Verify the audit trail's hash chain and name the first broken row, if any. With "
        "--checkpoints, also prove that no rows were cut from either end up to the last checkpoint."
    )

    def add_arguments(self, parser):
        parser.add_argument("--chunk-size", type=int, default=5000, help="Rows read per round trip.")
        parser.add_argument(
            "--checkpoints",
            metavar="PATH",
            help="The signed checkpoint file written by `audit_checkpoint` (or its directory).",
        )

    def handle(self, *args, chunk_size, checkpoints, **options):
        started = time.monotonic()
        marks = []
        if checkpoints:
            try:
                marks = checkpoints_read(checkpoints)
            except CheckpointError as exc:
                raise CommandError(str(exc)) from exc
        report = audit_chain_verify(chunk_size=chunk_size, checkpoints=marks)
        elapsed = time.monotonic() - started
        if not report.intact:
            raise CommandError(
                f"Audit chain broken at row {report.broken_row_id}: {report.reason}. "
                f"{report.rows_checked} row(s) before it verified."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit chain intact: {report.rows_checked} row(s) verified in {elapsed:.2f} s."
            )
        )
        if checkpoints:
            if marks:
                last = max(marks, key=lambda c: c.count)
                self.stdout.write(
                    f"{len(marks)} checkpoint(s) match; the newest, of {last.taken_at}, counted "
                    f"{last.count} row(s): nothing was cut before it. Rows after it are not covered yet."
                )
            else:
                self.stdout.write("The checkpoint file holds no checkpoint: nothing to compare with.")
