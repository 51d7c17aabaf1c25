"""`manage.py create_fleet --sites N --devices-per-site M`: a large synthetic fleet, fast.

The database guide's "10 sites with 50 devices" scripts, generalised: set-based inserts (one
INSERT ... SELECT over generate_series per batch on PostgreSQL, bulk_create elsewhere), a
progress bar on stderr, one `devices.bulk_created` audit row for the whole run, and all or
nothing (one transaction). 1,000,000 devices take well under a minute on PostgreSQL; see
docs/performance.md. The rules of what a generated fleet looks like live in devices_app.bulk.
"""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from devices_app import bulk


class Command(BaseCommand):
    help = (
        "Create a synthetic fleet of N sites with M devices each (set-based inserts, one audit row). "
        "Ids are derived from --site-prefix and must not exist yet."
    )

    def add_arguments(self, parser):
        parser.add_argument("--sites", type=int, required=True, help="Number of sites to create.")
        parser.add_argument(
            "--devices-per-site", type=int, required=True, help="Devices at each site (8 of 10 are POS)."
        )
        parser.add_argument(
            "--site-prefix",
            default="fleet",
            help="Sites are <prefix>-0001, <prefix>-0002, ...; devices <site_id>-pos-terminal-1, ... "
            "A prefix can be used once. Default: fleet.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=25_000,
            help="About this many devices per INSERT (whole sites). Default: 25000.",
        )
        parser.add_argument(
            "--health-checks-per-device",
            type=int,
            default=0,
            help="Also write K health checks per device that has reported (5 minutes apart). Default: 0.",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="Seed for statuses, firmware and metrics. Default: 0."
        )

    def handle(self, *args, **options):
        sites, per_site = options["sites"], options["devices_per_site"]
        prefix = options["site_prefix"]
        try:
            bulk.validate_request(
                prefix=prefix,
                sites=sites,
                devices_per_site=per_site,
                health_checks_per_device=options["health_checks_per_device"],
                batch_size=options["batch_size"],
            )
            # Checked again under a lock inside the transaction; here for a clean early answer.
            bulk.check_prefix_unused(prefix)
        except bulk.FleetError as exc:
            raise CommandError(str(exc)) from None

        # tqdm writes carriage returns to redraw in place; Django's OutputWrapper would add a
        # newline to every write, so the bar goes to the stream underneath it.
        bar = tqdm(
            total=sites * per_site,
            unit=" devices",
            unit_scale=sites * per_site >= 10_000,
            file=self.stderr._out,
            disable=options["verbosity"] == 0,
            desc=f"{prefix}-*",
        )
        try:
            with bar:
                plan, result = bulk.create_fleet(
                    prefix=prefix,
                    sites=sites,
                    devices_per_site=per_site,
                    health_checks_per_device=options["health_checks_per_device"],
                    seed=options["seed"],
                    batch_size=options["batch_size"],
                    progress=bar.update,
                )
        except bulk.FleetError as exc:
            raise CommandError(str(exc)) from None
        bulk.analyze_tables()
        if options["verbosity"] > 0:
            self._report(plan, result)

    def _report(self, plan: bulk.FleetPlan, result: bulk.FleetResult) -> None:
        rate = result.devices / result.seconds if result.seconds else 0
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {result.sites:,} sites, {result.devices:,} devices and "
                f"{result.health_checks:,} health checks in {result.seconds:.1f} s "
                f"({rate:,.0f} devices/s)."
            )
        )
        self.stdout.write(
            f"  sites       : {plan.site_id(1)} .. {plan.site_id(plan.sites)}\n"
            f"  devices     : {plan.site_id(1)}-pos-terminal-1 .. (per site: {plan.devices_per_site})\n"
            f"  MAC range   : {bulk.mac_text(plan.first_mac)} .. {bulk.mac_text(plan.last_mac)}\n"
            f"  audit       : one devices.bulk_created row"
        )
