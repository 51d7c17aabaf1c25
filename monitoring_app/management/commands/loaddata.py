"""Django's `loaddata`, plus the demo clock: a fixture that starts with a DemoClock anchor
(fixtures/demo.json) is loaded with its dates moved to lead up to now (monitoring_app.demo_clock).
Every other fixture loads exactly as with Django's command. Fixtures carry per-site chart
snapshots only: the chain's totals per snapshot (FleetTotalSnapshot) are summed from them
after the load, as the tick does when it takes one."""

from django.core.management.commands import loaddata

from monitoring_app import demo_clock
from monitoring_app.rollup import fleet_totals_rebuild


class Command(loaddata.Command):
    def loaddata(self, fixture_labels):
        with demo_clock.loading():
            super().loaddata(fixture_labels)
        fleet_totals_rebuild(using=self.using)
