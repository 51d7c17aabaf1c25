"""`manage.py import_homepot --from postgresql://...`: move a chain from the older HOMEPOT.

Reads the older database read-only and imports sites, devices, users (with their bcrypt
hashes, so they log in with their old passwords), jobs, health check history and the audit
trail. Safe to run again: what changed is updated, what is new is added, nothing doubles.
`--dry-run` reports what would happen, table by table, with every row that cannot be taken
and why, and keeps nothing. docs/migrating-from-older-homepot.md is the operator's guide.
"""

from django.core.management.base import BaseCommand, CommandError

from legacy_app.importer import TABLES, LegacyImportError, import_homepot, redact_url


class Command(BaseCommand):
    help = "Import sites, devices, users, jobs, health history and audit logs from the older HOMEPOT."

    def add_arguments(self, parser):
        parser.add_argument(
            "--from", dest="url", required=True, metavar="URL", help="postgresql://user:pass@host:5432/db"
        )
        parser.add_argument("--dry-run", action="store_true", help="Check and count; keep nothing.")
        parser.add_argument(
            "--only",
            nargs="+",
            choices=TABLES,
            default=list(TABLES),
            metavar="TABLE",
            help=f"Import only these tables (default: all of {', '.join(TABLES)}).",
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bars.")

    def handle(self, *args, url, dry_run, only, no_progress, **options):
        self.stdout.write(f"Importing from {redact_url(url)}{' (dry run)' if dry_run else ''}")
        try:
            result = import_homepot(
                url=url,
                dry_run=dry_run,
                tables=tuple(only),
                progress=not no_progress,
                log=self.stdout.write,
            )
        except LegacyImportError as exc:
            raise CommandError(str(exc)) from exc
        verb = "would be " if dry_run else ""
        for report in result.tables.values():
            line = (
                f"{report.table}: {report.read} read, {report.created} {verb}created, "
                f"{report.updated} {verb}updated, {report.unchanged} unchanged, {report.skipped} skipped"
            )
            timing = f" in {report.seconds:.1f} s"
            if report.skip_reasons:
                line += " (" + ", ".join(f"{n} {k}" for k, n in sorted(report.skip_reasons.items())) + ")"
            style = self.style.WARNING if report.skipped else self.style.SUCCESS
            self.stdout.write(style(line + timing))
            for key, reason in report.skipped_rows:
                self.stdout.write(f"  skipped {report.table} {key}: {reason}")
            if report.table == "health_checks" and report.skipped > len(report.skipped_rows):
                self.stdout.write("  (the first ids per reason are named; the counts above are complete)")
            for key, what in report.cleaned_rows:
                self.stdout.write(f"  cleaned {report.table} {key}: NUL characters removed from {what}")
            for note, n in sorted(report.notes.items()):
                self.stdout.write(f"  note: {n} × {note}")
        if dry_run:
            self.stdout.write("Dry run: nothing was saved.")
