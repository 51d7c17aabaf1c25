from django.core.management.base import BaseCommand, CommandError

from monitoring_app.checkpoints import CheckpointError, checkpoint_write


class Command(BaseCommand):
    help = (
        "Append a signed checkpoint of the audit trail's head (id, hash, row count, time) to "
        "the checkpoint file, so `verify_audit --checkpoints` can prove later that no rows were cut."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dir",
            dest="location",
            metavar="PATH",
            help="Directory (or file) to append to; default HOMEPOT_AUDIT_CHECKPOINT_DIR.",
        )

    def handle(self, *args, location, **options):
        try:
            checkpoint, path = checkpoint_write(location)
        except (CheckpointError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Checkpoint written to {path}: row {checkpoint.row_id}, {checkpoint.count} row(s), "
                f"hash {checkpoint.row_hash[:16]}…"
            )
        )
