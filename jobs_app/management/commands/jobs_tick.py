"""Run the jobs app's periodic work (start due jobs, time out deliveries, finish rollups and
re-dispatch held work) once, or every N seconds with --loop.

Celery beat runs the same tasks when a broker is available; this command is what
`scripts/run.sh` uses when it is not (tasks then run in-process, CELERY_TASK_ALWAYS_EAGER).
"""

import time

from django.core.management.base import BaseCommand

from jobs_app.tasks import jobs_tick


class Command(BaseCommand):
    help = "Run the jobs' periodic work once, or every --loop seconds."

    def add_arguments(self, parser):
        parser.add_argument("--loop", type=float, default=0, help="Repeat every this many seconds.")

    def handle(self, *args, loop, **options):
        while True:
            outcome = jobs_tick()
            if options["verbosity"] > 1 or not loop:
                self.stdout.write(str(outcome))
            if not loop:
                return
            time.sleep(loop)
