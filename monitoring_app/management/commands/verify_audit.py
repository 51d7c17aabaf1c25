import time

from django.core.management.base import BaseCommand, CommandError

from monitoring_app.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain and name the first broken row, if any."

    def add_arguments(self, parser):
        parser.add_argument("--chunk-size", type=int, default=5000, help="Rows read per round trip.")

    def handle(self, *args, chunk_size, **options):
        started = time.monotonic()
        report = audit_chain_verify(chunk_size=chunk_size)
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
