"""The fleet page's charts (FleetSnapshot rollup written by the tick) and jobs in progress."""

import datetime
import re

import pytest
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.tests.factories import DeliveryFactory, JobFactory
from monitoring_app.models import FleetSnapshot
from monitoring_app.retention import health_history_prune
from monitoring_app.rollup import bucket_start, fleet_snapshot_take, fleet_totals_rebuild
from monitoring_app.tasks import monitoring_tick
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

FLEET = "/admin/monitoring_app/alert/fleet/"


@pytest.fixture
def stores():
    mine, theirs = SiteFactory(site_id="site-mine"), SiteFactory(site_id="site-theirs")
    DeviceFactory.create_batch(3, site=mine, status="online", health_status="healthy")
    DeviceFactory(site=mine, status="online", health_status="unhealthy")
    DeviceFactory(site=mine, status="offline")
    DeviceFactory.create_batch(7, site=theirs, status="online", health_status="degraded")
    return mine, theirs


def manager_of(client, site):
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    client.force_login(user)
    return user


def test_the_tick_writes_one_snapshot_row_per_site_per_bucket(stores):
    mine, theirs = stores

    first = monitoring_tick()
    again = monitoring_tick()  # same bucket: nothing more

    assert first["snapshot_rows"] == 2 and again["snapshot_rows"] == 0
    rows = {row.site_id: row for row in FleetSnapshot.objects.all()}
    assert set(rows) == {mine.pk, theirs.pk}
    assert rows[mine.pk].bucket_at == bucket_start(timezone.now())
    counts = rows[mine.pk]
    assert (counts.total, counts.online, counts.offline) == (5, 4, 1)
    assert (counts.healthy, counts.degraded, counts.unhealthy) == (3, 0, 1)
    assert (rows[theirs.pk].online, rows[theirs.pk].degraded) == (7, 7)


def test_a_new_bucket_gets_new_rows():
    site = SiteFactory()
    DeviceFactory(site=site, status="online")
    now = timezone.now()

    assert fleet_snapshot_take(now=now) == 1
    assert fleet_snapshot_take(now=now + datetime.timedelta(minutes=15)) == 1
    assert FleetSnapshot.objects.count() == 2


def test_retention_prunes_old_snapshots_and_keeps_recent_ones():
    site = SiteFactory()
    DeviceFactory(site=site, status="online")
    now = timezone.now()
    fleet_snapshot_take(now=now - datetime.timedelta(days=9))
    fleet_snapshot_take(now=now - datetime.timedelta(days=6))

    health_history_prune(now=now)

    assert [row.bucket_at.date() for row in FleetSnapshot.objects.all()] == [
        bucket_start(now - datetime.timedelta(days=6)).date()
    ]


def snapshot(site, at, **counts):
    """A site's snapshot row, and the chain's total of its bucket summed again, as the tick
    writes both."""
    values = dict.fromkeys(
        ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy"), 0
    )
    values.update(counts)
    row = FleetSnapshot.objects.create(site=site, bucket_at=bucket_start(at), **values)
    fleet_totals_rebuild()
    return row


def chart_legend(text, kind, key):
    """The legend line of one chart: "online 4, offline 1"."""
    figure = re.search(rf'<figure class="hp-chart" id="chart-{kind}-{key}">(.*?)</figure>', text, re.S)
    assert figure, f"chart {kind}-{key} missing"
    caption = re.search(r"<figcaption>(.*?)</figcaption>", figure.group(1), re.S).group(1)
    return " ".join(re.sub(r"<[^>]+>|■", "", caption).split())


def chart_figure(text, kind, key) -> str:
    figure = re.search(rf'<figure class="hp-chart" id="chart-{kind}-{key}">(.*?)</figure>', text, re.S)
    assert figure, f"chart {kind}-{key} missing"
    return figure.group(1)


def chart_top(text, kind, key) -> int:
    """The highest count labelled on the chart's y axis."""
    labels = re.findall(
        r'dominant-baseline="middle" fill="currentColor">([\d,]+)</text>', chart_figure(text, kind, key)
    )
    return max(int(label.replace(",", "")) for label in labels)


def test_the_charts_show_only_the_callers_sites(client, stores, django_assert_max_num_queries):
    mine, theirs = stores
    hour_ago = timezone.now().replace(minute=0) - datetime.timedelta(hours=1)
    snapshot(mine, hour_ago, total=5, online=41, offline=1, healthy=39, unhealthy=2)
    snapshot(theirs, hour_ago, total=7, online=7123, offline=0, degraded=7123)
    manager_of(client, mine)

    with django_assert_max_num_queries(20):
        response = client.get(FLEET)

    text = response.content.decode()
    assert response.status_code == 200
    for key in ("24h", "7d"):
        # The last point is now: the live counts, the numbers of the table above.
        assert chart_legend(text, "online", key) == "Devices online: online 4, offline 1"
        assert (
            chart_legend(text, "health", key)
            == "Health of online devices: healthy 3, degraded 0, unhealthy 1"
        )
        assert chart_top(text, "online", key) == 41  # the snapshot is drawn too
    assert "7123" not in text and "7,123" not in text
    assert text.count("<polyline") == 2 * 5  # 2 windows × (2 + 3 series)


def test_the_admin_charts_sum_every_site(admin_browser, stores):
    mine, theirs = stores
    hour_ago = timezone.now().replace(minute=0) - datetime.timedelta(hours=1)
    snapshot(mine, hour_ago, online=41, offline=1)
    snapshot(theirs, hour_ago, online=7123)

    text = admin_browser.get(FLEET).content.decode()

    assert chart_legend(text, "online", "24h") == "Devices online: online 11, offline 1"
    assert chart_top(text, "online", "24h") == 7164


def test_the_dashboard_query_count_does_not_grow_with_history_or_jobs(
    admin_browser, stores, django_assert_max_num_queries
):
    mine, theirs = stores
    now = timezone.now()
    for hours in range(48):
        snapshot(mine, now - datetime.timedelta(hours=hours), online=hours)
        snapshot(theirs, now - datetime.timedelta(hours=hours), online=hours)
    for _ in range(5):
        DeliveryFactory.create_batch(2, job=JobFactory(site=mine, status=JobStatus.SENT))

    with django_assert_max_num_queries(20):
        response = admin_browser.get(FLEET)

    assert response.status_code == 200
    assert len(response.context["jobs"]) == 5


def test_before_any_snapshot_the_charts_draw_the_current_point(admin_browser, stores):
    response = admin_browser.get(FLEET)
    text = response.content.decode()

    assert text.count("Collecting since") == 4 and "No snapshots yet" not in text
    assert text.count("<circle") == 2 * 5  # every series' current point
    assert chart_legend(text, "online", "24h") == "Devices online: online 11, offline 1"
    table = re.search(r'<table id="fleet-counts">.*?<tbody><tr>(.*?)</tr>', text, re.S).group(1)
    cells = [int(cell) for cell in re.findall(r"<td>(\d+)</td>", table)]
    assert cells[:2] == [12, 11]  # total, online: the chart's last point is the table's number
    assert "time (UTC)" in text and ">devices</text>" in text  # labelled axes


def test_the_table_counts_add_up(admin_browser, stores):
    DeviceFactory(site=stores[0], status="error")
    DeviceFactory(site=stores[0], status="maintenance")
    summary = admin_browser.get(FLEET).context["summary"]
    by = summary["by_status"]
    assert sum(by.values()) == summary["total"] == 14
    assert (by["online"], by["offline"], by["error"], by["maintenance"]) == (11, 1, 1, 1)
    assert summary["healthy"] + summary["degraded"] + summary["unhealthy"] == by["online"]


def test_jobs_in_progress_are_the_callers_unfinished_ones_newest_first_with_progress(client, stores):
    mine, theirs = stores
    older = JobFactory(site=mine, status=JobStatus.SENT)
    DeliveryFactory(job=older, status=DeliveryStatus.COMPLETED)
    DeliveryFactory(job=older, status=DeliveryStatus.COMPLETED)
    DeliveryFactory(job=older, status=DeliveryStatus.COMPLETED)
    DeliveryFactory(job=older, status=DeliveryStatus.SENT)
    newer = JobFactory(site=mine, status=JobStatus.SCHEDULED)
    JobFactory(site=mine, status=JobStatus.COMPLETED)
    JobFactory(site=theirs, status=JobStatus.SENT)
    manager_of(client, mine)

    response = client.get(FLEET)

    assert [job.pk for job in response.context["jobs"]] == [newer.pk, older.pk]
    text = response.content.decode()
    assert '<progress value="3" max="4"></progress> 3 of 4 devices done (75 %)' in text
    assert "site-theirs" not in text


def test_jobs_in_progress_are_bounded(admin_browser):
    JobFactory.create_batch(23, status=JobStatus.QUEUED)
    assert len(admin_browser.get(FLEET).context["jobs"]) == 20


def test_the_week_chart_reads_the_hourly_snapshots_and_the_day_chart_every_one(admin_browser):
    site = SiteFactory()
    on_the_hour = timezone.now().replace(minute=0) - datetime.timedelta(hours=2)
    snapshot(site, on_the_hour, online=5)
    snapshot(site, on_the_hour + datetime.timedelta(minutes=15), online=6)
    snapshot(site, timezone.now() - datetime.timedelta(days=8), online=99)  # before both windows

    text = admin_browser.get(FLEET).content.decode()

    assert chart_top(text, "online", "24h") == 6
    assert chart_top(text, "online", "7d") == 5


def test_the_fleet_counts_follow_the_site_health_rule_for_every_state():
    """fleet_summary folds one GROUP BY (site, status, health) in Python; site health counts
    with filtered aggregates in SQL. The two must agree for every status and health."""
    from devices_app.choices import DeviceStatus
    from monitoring_app.choices import HealthStatus
    from monitoring_app.selectors import _health_counts_by_site
    from sites_app.selectors import health_counts_per_site

    sites = [SiteFactory(), SiteFactory()]
    for index, status in enumerate(DeviceStatus.values):
        for health in ["", *HealthStatus.values]:
            DeviceFactory.create_batch(
                1 + index % 2, site=sites[index % 2], status=status, health_status=health
            )

    folded = sorted(_health_counts_by_site(Device.objects.all()), key=lambda row: row["site_id"])
    expected = sorted(health_counts_per_site(Device.objects.all()), key=lambda row: row["site_id"])
    assert [{k: v for k, v in row.items() if k != "status_error"} for row in folded] == expected
    errors = Device.objects.filter(status=DeviceStatus.ERROR).count()
    assert sum(row["status_error"] for row in folded) == errors
