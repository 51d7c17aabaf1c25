"""The console's cheaper rendering writes what Django's did (issue 11, console3).

- Every console list's rows (homepot.admin_rows.ConsoleRows) are the cells Django's own
  `items_for_result` writes for the same changelist, filtered, sorted or not.
- The dashboard's alert rows, job rows and charts (monitoring_app.admin_dashboard) are the
  HTML the template loops and fleet_chart.html wrote (kept here as the reference).
- An admin of the whole chain (statements compiled once per process, homepot.compiled_sql)
  sees the numbers a manager of every site sees through the ORM, and a store manager who
  opens the pages after an admin still sees only their own stores.
"""

import datetime
import re

import pytest
from django.contrib.admin.templatetags import admin_list
from django.template import engines
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.tests.factories import DeliveryFactory, JobFactory
from monitoring_app.choices import AlertKind, AlertSeverity, HealthStatus
from monitoring_app.models import Alert
from monitoring_app.rollup import fleet_history, fleet_snapshot_take
from monitoring_app.selectors import fleet_summary
from monitoring_app.tests.factories import AuditLogFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

FLEET_PAGE = "/admin/monitoring_app/alert/fleet/"

# The dashboard's loops and chart as its templates wrote them before (2938fe6).
OLD_ALERT_LOOP = """{% load homepot %}{% for alert in alerts %}
      <tr><td><a href="{% change_url 'admin:monitoring_app_alert_change' alert.pk %}">{{ alert.opened_at|date:"Y-m-d H:i" }}</a></td>
          <td>{% status_badge alert.severity alert.get_severity_display %}</td><td>{{ alert.get_kind_display }}</td><td>{{ alert.site.site_id }}</td><td>{{ alert.message }}</td></tr>
    {% endfor %}"""  # noqa: E501
OLD_JOB_LOOP = """{% load homepot %}{% for job in jobs %}
      <tr><td><a href="{% change_url 'admin:jobs_app_job_change' job.pk %}">Job #{{ job.pk }}</a></td><td>{{ job.created_at|date:"Y-m-d H:i" }}</td>
          <td>{{ job.get_action_display }}</td><td>{{ job.site.site_id }}</td><td>{% status_badge job.status job.get_status_display %}</td>
          <td>{% if job.delivery_total %}<progress value="{{ job.delivery_finished }}" max="{{ job.delivery_total }}"></progress> {{ job.delivery_finished }} of {{ job.delivery_total }} device{{ job.delivery_total|pluralize }} done ({{ job.delivery_percent|percent }}){% else %}no devices yet{% endif %}</td></tr>
    {% endfor %}"""  # noqa: E501
OLD_CHART = """{# One line chart #}
<figure class="hp-chart" id="chart-{{ kind }}-{{ key }}">
  <figcaption>{{ caption }}:
    {% for line in chart.lines %}<span style="color: {{ line.color }}">■</span> {{ line.name }}{% if line.latest is not None %} {{ line.latest }}{% endif %}{% if not forloop.last %}, {% endif %}{% endfor %}
  </figcaption>
  {% if chart.collecting_since %}<p class="hp-chart-note">Collecting since {{ chart.collecting_since|date:"D H:i" }} {{ chart.zone }} (a snapshot every 15 minutes); the last point is now.</p>{% endif %}
  <svg xmlns="http://www.w3.org/2000/svg" width="{{ chart.width }}" height="{{ chart.height }}" viewBox="0 0 {{ chart.width }} {{ chart.height }}" role="img" aria-label="{{ caption }}, {{ window }}" font-size="11" font-family="sans-serif">
    {% for tick in chart.y_ticks %}<line x1="{{ chart.plot.left }}" x2="{{ chart.plot.right }}" y1="{{ tick.y }}" y2="{{ tick.y }}" stroke="#ddd"/><text x="{{ chart.plot.left|add:-6 }}" y="{{ tick.y }}" text-anchor="end" dominant-baseline="middle" fill="currentColor">{{ tick.label }}</text>{% endfor %}
    <line x1="{{ chart.plot.left }}" x2="{{ chart.plot.left }}" y1="{{ chart.plot.top }}" y2="{{ chart.plot.bottom }}" stroke="#999"/>
    <line x1="{{ chart.plot.left }}" x2="{{ chart.plot.right }}" y1="{{ chart.plot.bottom }}" y2="{{ chart.plot.bottom }}" stroke="#999"/>
    {% for tick in chart.x_ticks %}<text x="{{ tick.x }}" y="{{ chart.plot.bottom|add:14 }}" text-anchor="{% if forloop.first %}start{% elif forloop.last %}end{% else %}middle{% endif %}" fill="currentColor">{{ tick.label }}</text>{% endfor %}
    <text x="12" y="{{ chart.plot.top|add:4 }}" transform="rotate(-90 12 {{ chart.plot.top|add:4 }})" text-anchor="end" fill="currentColor">devices</text>
    <text x="{{ chart.plot.right }}" y="{{ chart.height|add:-2 }}" text-anchor="end" fill="currentColor">time ({{ chart.zone }})</text>
    {% for line in chart.lines %}<polyline fill="none" stroke="{{ line.color }}" stroke-width="1.5" points="{{ line.points }}"><title>{{ line.name }}</title></polyline>{% if line.last_x %}<circle cx="{{ line.last_x }}" cy="{{ line.last_y }}" r="3" fill="{{ line.color }}"><title>{{ line.name }} now: {{ line.latest }}</title></circle>{% endif %}{% endfor %}
  </svg>
</figure>
"""  # noqa: E501


def render(source: str, **context) -> str:
    return engines["django"].from_string(source).render(context)


@pytest.fixture
def fleet():
    """Two stores with devices in every state, open alerts, and jobs in progress with no,
    one and several deliveries (some finished)."""
    mine, theirs = SiteFactory(site_id="site-mine"), SiteFactory(site_id="site-<theirs>")
    now = timezone.now()
    online = {"status": DeviceStatus.ONLINE, "last_seen": now}
    for site in (mine, theirs):
        DeviceFactory(site=site, health_status=HealthStatus.HEALTHY, **online)
        DeviceFactory(site=site, health_status=HealthStatus.DEGRADED, **online)
        silent = DeviceFactory(site=site, status=DeviceStatus.OFFLINE, health_status="", last_seen=None)
        DeviceFactory(site=site, status=DeviceStatus.MAINTENANCE, last_seen=now - datetime.timedelta(days=3))
    alerts = [
        (theirs, silent, AlertKind.DEVICE_OFFLINE, AlertSeverity.WARNING),
        (mine, None, AlertKind.SITE_OFFLINE, AlertSeverity.CRITICAL),
    ]
    for n, (site, device, kind, severity) in enumerate(alerts):
        Alert.objects.create(
            site=site,
            device=device,
            kind=kind,
            severity=severity,
            message=f"<b>{kind}</b> & more",
            opened_at=now - datetime.timedelta(minutes=n),
            last_seen_at=now,
        )
    JobFactory(site=mine, status=JobStatus.QUEUED)  # no deliveries yet
    one = JobFactory(site=theirs, status=JobStatus.SENT)
    DeliveryFactory(job=one, status=DeliveryStatus.COMPLETED)
    several = JobFactory(site=mine, status=JobStatus.ACKNOWLEDGED)
    for status in (DeliveryStatus.COMPLETED, DeliveryStatus.PENDING, DeliveryStatus.FAILED):
        DeliveryFactory(job=several, status=status)
    AuditLogFactory(site=mine, description="<i>renamed</i>")
    # One snapshot, on the hour an hour ago (in both charts): they say since when they collect.
    fleet_snapshot_take(now=(now - datetime.timedelta(hours=1)).replace(minute=0))
    return mine, theirs


@pytest.mark.parametrize(
    "path",
    [
        "/admin/devices_app/device/",
        "/admin/devices_app/device/?status__exact=online&o=-3.1",
        "/admin/devices_app/device/?q=site-mine",
        "/admin/sites_app/site/",
        "/admin/jobs_app/job/",
        "/admin/monitoring_app/alert/?state=open",
        "/admin/monitoring_app/auditlog/",
    ],
)
def test_console_list_rows_are_the_cells_django_writes(admin_browser, fleet, path):
    response = admin_browser.get(path)
    assert response.status_code == 200
    shown = next(c["results"] for c in response.context if "results" in c and "result_headers" in c)
    expected = list(admin_list.results(response.context["cl"]))

    assert shown and [list(row) for row in shown] == [list(row) for row in expected]
    assert all(cell in response.content.decode() for cell in shown[0])


def test_the_dashboard_rows_and_charts_are_what_the_templates_wrote(admin_browser, fleet):
    response = admin_browser.get(FLEET_PAGE)
    context = response.context

    assert len(context["alerts"]) == 2 and len(context["jobs"]) == 3
    assert context["alert_rows"] == render(OLD_ALERT_LOOP, alerts=context["alerts"])
    assert context["job_rows"] == render(OLD_JOB_LOOP, jobs=context["jobs"])
    assert "no devices yet" in context["job_rows"] and "1 of 1 device done" in context["job_rows"]
    assert "&lt;b&gt;" in context["alert_rows"]  # a message is escaped, as the template did
    for window in context["charts"]:
        for kind, caption in (("online", "Devices online"), ("health", "Health of online devices")):
            names = {"caption": caption, "kind": kind, "key": window["key"], "window": window["window"]}
            old = render(OLD_CHART, chart=window[kind], **names)
            assert window[f"{kind}_figure"] == old
            assert "Collecting since" in old
    assert context["alert_rows"] in response.content.decode()


def fleet_table(client) -> list[str]:
    html = client.get(FLEET_PAGE).content.decode()
    table = re.search(r'<table id="fleet-counts">.*?</table>', html, re.S).group(0)
    return re.findall(r"<td>(\d+)</td>", table)


def test_an_admin_sees_the_numbers_a_manager_of_every_site_sees(client, admin_user, fleet):
    everywhere = UserFactory(is_staff=True)
    for site in fleet:
        SiteMembershipFactory(user=everywhere, site=site, role=MembershipRole.MANAGER)
    now = timezone.now()

    admin_summary, manager_summary = fleet_summary(user=admin_user), fleet_summary(user=everywhere)
    assert admin_summary == manager_summary and admin_summary["total"] == Device.objects.count()
    for hours, hourly in ((24, False), (24 * 7, True)):
        chain = fleet_history(user=admin_user, hours=hours, hourly=hourly, now=now)
        summed = fleet_history(user=everywhere, hours=hours, hourly=hourly, now=now)
        assert chain == summed and len(chain["points"]) == 1

    client.force_login(admin_user)
    as_admin = fleet_table(client)
    client.force_login(everywhere)
    assert fleet_table(client) == as_admin


def test_a_store_manager_after_an_admin_sees_only_their_store(client, admin_user, fleet):
    mine, _ = fleet
    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=mine, role=MembershipRole.MANAGER)
    client.force_login(admin_user)
    admin_page = client.get(FLEET_PAGE).content.decode()
    assert fleet_table(client)[0] == str(Device.objects.count()) and "site-&lt;theirs&gt;" in admin_page

    client.force_login(manager)
    page = client.get(FLEET_PAGE).content.decode()
    landing = client.get("/admin/").content.decode()

    assert fleet_table(client)[0] == str(Device.objects.filter(site=mine).count())
    assert "site-&lt;theirs&gt;" not in page and "site-&lt;theirs&gt;" not in landing
    assert "Open alerts (1," in page  # the other store's alert is not counted
