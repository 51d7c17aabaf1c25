"""Alerts: opened and closed by the evaluator, handled through the API (notifications:
test_notifications.py)."""

import datetime

import pytest
from django.db import connection
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.models import Alert, AlertNote, AuditLog
from monitoring_app.selectors import audit_chain_verify
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

ALERTS = "/api/v1/alerts"


@pytest.fixture(autouse=True)
def thresholds(settings):
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 300
    settings.HOMEPOT_MONITORING_ALERT_UNHEALTHY_SECONDS = 600
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION = 0.6
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES = 2
    settings.HOMEPOT_MONITORING_WEBHOOK_URL = ""


def ago(seconds):
    return timezone.now() - datetime.timedelta(seconds=seconds)


def offline(site, seconds=600, **kwargs):
    return DeviceFactory(
        site=site,
        status=DeviceStatus.OFFLINE,
        connectivity_changed_at=None if seconds is None else ago(seconds),
        **kwargs,
    )


def online(site, **kwargs):
    return DeviceFactory(site=site, status=DeviceStatus.ONLINE, last_seen=timezone.now(), **kwargs)


@pytest.fixture
def site():
    return SiteFactory()


# --- Opening and closing ----------------------------------------------------------------------


def test_a_device_offline_past_the_threshold_opens_one_alert_and_a_repeat_opens_none(site):
    till = offline(site)
    online(site)
    online(site)

    first = alerts_evaluate()
    second = alerts_evaluate()

    alert = Alert.objects.get()
    assert (alert.kind, alert.device, alert.site, alert.severity) == ("device_offline", till, site, "warning")
    assert till.device_id in alert.message
    assert len(first.opened) == 1 and second.opened == []
    assert AuditLog.objects.filter(event_type="alert.opened", device_ref=till.device_id).count() == 1


def test_a_device_offline_for_less_than_the_threshold_opens_nothing(site):
    offline(site, seconds=200)
    online(site)
    online(site)
    assert alerts_evaluate().opened == []


def test_the_alert_closes_itself_when_the_device_is_back(site):
    till = offline(site)
    online(site)
    online(site)
    alerts_evaluate()

    Device.objects.filter(pk=till.pk).update(status=DeviceStatus.ONLINE)
    result = alerts_evaluate()

    alert = Alert.objects.get()
    assert alert.resolved_at is not None and alert.resolved_by is None
    assert result.resolved == [alert.pk]
    assert AuditLog.objects.filter(event_type="alert.resolved").count() == 1


def test_maintenance_suppresses_and_closes_alerts(site):
    till = offline(site)
    online(site)
    online(site)
    alerts_evaluate()
    Device.objects.filter(pk=till.pk).update(status=DeviceStatus.MAINTENANCE)

    alerts_evaluate()

    assert Alert.objects.open().count() == 0
    assert alerts_evaluate().opened == []


def test_an_unhealthy_device_opens_an_alert_after_the_threshold_and_closes_on_recovery(site):
    sick = online(site, health_status="unhealthy", health_changed_at=ago(900))
    online(site, health_status="unhealthy", health_changed_at=ago(100))  # not long enough yet

    alerts_evaluate()
    alert = Alert.objects.get()
    assert (alert.kind, alert.device) == ("device_unhealthy", sick)

    Device.objects.filter(pk=sick.pk).update(health_status="healthy")
    alerts_evaluate()
    assert Alert.objects.open().count() == 0


def test_when_most_of_a_site_drops_together_one_site_alert_opens_instead_of_one_per_terminal(site):
    for _ in range(4):
        offline(site)
    online(site)
    other_site = SiteFactory()
    lone = offline(other_site)
    online(other_site)
    online(other_site)

    alerts_evaluate()

    site_alerts = Alert.objects.filter(kind="site_offline")
    assert [(a.site, a.device, a.severity) for a in site_alerts] == [(site, None, "critical")]
    assert "4 of 5" in site_alerts[0].message
    assert not Alert.objects.filter(kind="device_offline", site=site).exists()
    assert Alert.objects.get(kind="device_offline").device == lone


def test_the_site_alert_closes_when_the_store_comes_back(site):
    tills = [offline(site) for _ in range(3)]
    alerts_evaluate()
    Device.objects.filter(pk__in=[t.pk for t in tills[:2]]).update(status=DeviceStatus.ONLINE)

    alerts_evaluate()

    assert Alert.objects.get(kind="site_offline").resolved_at is not None
    # The one till still offline now gets its own alert.
    assert Alert.objects.open().get().device == tills[2]


def test_a_site_alert_waits_until_enough_devices_have_been_offline_for_the_threshold(site):
    # 4 of 5 offline now (the rollup's candidate), but only 2 of them for longer than the
    # threshold: no site alert yet, and no device alert for the 2 either (under the fraction
    # the store is not "offline": each long-offline till gets its own).
    offline(site), offline(site)
    recent = [offline(site, seconds=60) for _ in range(2)]
    online(site)

    alerts_evaluate()
    assert not Alert.objects.filter(kind="site_offline").exists()
    assert Alert.objects.filter(kind="device_offline").count() == 2

    Device.objects.filter(pk__in=[d.pk for d in recent]).update(connectivity_changed_at=ago(600))
    alerts_evaluate()
    assert Alert.objects.open().filter(kind="site_offline", site=site).count() == 1


def test_an_offline_device_with_no_connectivity_time_is_not_counted_as_offline_for_long(site):
    # The rollup knows "since when" only for devices with a connectivity_changed_at; one
    # without (a status set before changes were stamped) sends the rule to the site's rows,
    # which count it as not offline for long enough, as they always did.
    for _ in range(3):
        offline(site)
    offline(site, seconds=None)
    online(site)

    alerts_evaluate()

    assert "3 of 5" in Alert.objects.get(kind="site_offline").message


def test_a_site_counted_from_the_rollup_and_one_counted_from_its_devices_read_alike():
    # Same shape, two sites: at `dark` every offline device went dark before the threshold
    # (the rollup's bound says so); at `mixed` the bound is recent (one device went dark a
    # minute ago, then its time was put back), so its rows are read. Same messages.
    dark, mixed = SiteFactory(site_id="site-dark"), SiteFactory(site_id="site-mixed")
    for site in (dark, mixed):
        for _ in range(3):
            offline(site)
        online(site)
    late = offline(mixed, seconds=60)
    Device.objects.filter(pk=late.pk).update(connectivity_changed_at=ago(600))
    offline(dark)

    alerts_evaluate()

    messages = dict(Alert.objects.filter(kind="site_offline").values_list("site__site_id", "message"))
    assert set(messages) == {"site-dark", "site-mixed"}
    assert messages["site-dark"].replace("site-dark", "x") == messages["site-mixed"].replace(
        "site-mixed", "x"
    )
    assert "4 of 5" in messages["site-dark"]


def test_more_devices_dropping_at_an_alerted_site_open_nothing_new(site):
    for _ in range(3):
        offline(site)
    last = online(site)
    alerts_evaluate()
    Device.objects.filter(pk=last.pk).update(status=DeviceStatus.OFFLINE, connectivity_changed_at=ago(600))

    evaluation = alerts_evaluate()

    assert evaluation.opened == [] and evaluation.resolved == []
    assert Alert.objects.get().kind == "site_offline"
    assert "3 of 4" in Alert.objects.get().message  # the alert as opened, not re-counted


def test_a_single_device_site_never_opens_a_site_alert(site):
    offline(site)
    alerts_evaluate()
    assert list(Alert.objects.values_list("kind", flat=True)) == ["device_offline"]


def test_every_alert_opened_or_resolved_has_its_audit_row_naming_its_store_and_terminal():
    dark, lone_site = SiteFactory(site_id="site-dark"), SiteFactory(site_id="site-lone")
    for _ in range(3):
        offline(dark)
    online(dark)
    lone = offline(lone_site, name="Till 9")
    online(lone_site), online(lone_site)
    back = offline(lone_site)
    alerts_evaluate()
    Device.objects.filter(pk=back.pk).update(status=DeviceStatus.ONLINE)
    before = AuditLog.objects.order_by("-id").values_list("id", flat=True).first()

    result = alerts_evaluate()
    Device.objects.filter(pk=back.pk).update(status=DeviceStatus.OFFLINE, connectivity_changed_at=ago(600))
    again = alerts_evaluate()

    rows = list(AuditLog.objects.filter(id__gt=before).order_by("id"))
    resolved = Alert.objects.get(pk=result.resolved[0])
    reopened = Alert.objects.get(pk=again.opened[0])
    assert [(r.event_type, r.site_ref, r.device_ref, r.site_id, r.device_id) for r in rows] == [
        ("alert.resolved", "site-lone", back.device_id, lone_site.pk, back.pk),
        ("alert.opened", "site-lone", back.device_id, lone_site.pk, back.pk),
    ]
    assert rows[0].description == f"Alert {resolved.pk} resolved itself: {resolved.message}"
    assert rows[1].description == f"Alert {reopened.pk} opened: {reopened.message}"
    assert rows[1].new_values == {"alert": reopened.pk, "kind": "device_offline", "severity": "warning"}
    assert all(r.actor_id is None and r.actor_ref == "" for r in rows)
    first = {
        row.new_values["alert"]: row
        for row in AuditLog.objects.filter(event_type="alert.opened", id__lte=before)
    }
    site_alert = Alert.objects.get(kind="site_offline")
    lone_alert = Alert.objects.get(device=lone)
    assert (first[site_alert.pk].site_ref, first[site_alert.pk].device_ref) == ("site-dark", "")
    assert first[site_alert.pk].device_id is None and first[site_alert.pk].site_id == dark.pk
    assert first[site_alert.pk].new_values == {
        "alert": site_alert.pk,
        "kind": "site_offline",
        "severity": "critical",
    }
    assert "Till 9" in first[lone_alert.pk].description and first[lone_alert.pk].device_ref == lone.device_id
    assert audit_chain_verify().intact


def test_a_burst_opens_one_alert_per_long_offline_terminal_and_one_per_dark_store():
    dark_sites = [SiteFactory() for _ in range(4)]
    for dark in dark_sites:
        for _ in range(3):
            offline(dark)
        online(dark)
    lone_sites = [SiteFactory() for _ in range(5)]
    lone = [offline(s) for s in lone_sites for _ in range(2)]
    for s in lone_sites:
        for _ in range(4):
            online(s)
    offline(lone_sites[0], seconds=60)  # not long enough yet

    first = alerts_evaluate()
    second = alerts_evaluate()

    opened = Alert.objects.filter(pk__in=first.opened)
    assert sorted(opened.filter(kind="site_offline").values_list("site_id", flat=True)) == sorted(
        s.pk for s in dark_sites
    )
    assert sorted(opened.filter(kind="device_offline").values_list("device_id", flat=True)) == sorted(
        d.pk for d in lone
    )
    assert len(first.opened) == 14 and second.opened == []
    assert AuditLog.objects.filter(event_type="alert.opened").count() == 14


def test_an_evaluation_inside_a_callers_transaction_leaves_its_planner_settings_as_they_were(site):
    offline(site)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_nestloop = on")
        assert len(alerts_evaluate().opened) == 1
        cursor.execute("SHOW enable_nestloop")
        assert cursor.fetchone()[0] == "on"


# --- API ------------------------------------------------------------------------------------


@pytest.fixture
def two_sites():
    mine, theirs = SiteFactory(site_id="site-mine"), SiteFactory(site_id="site-theirs")
    for s in (mine, theirs):
        offline(s)
        online(s)
        online(s)
    alerts_evaluate()
    return mine, theirs


def member(site, role):
    user = UserFactory()
    SiteMembershipFactory(user=user, site=site, role=role)
    return token_client(user)


def test_the_list_shows_only_the_callers_sites(two_sites, django_assert_max_num_queries):
    mine, theirs = two_sites
    client = member(mine, MembershipRole.VIEWER)

    with django_assert_max_num_queries(8):
        response = client.get(ALERTS)

    assert response.status_code == 200
    assert [a["site"] for a in response.json()["results"]] == ["site-mine"]


def test_an_admin_sees_every_alert_and_filters(two_sites, admin_api):
    assert len(admin_api.get(ALERTS).json()["results"]) == 2
    assert [a["site"] for a in admin_api.get(ALERTS, {"site": "site-theirs"}).json()["results"]] == [
        "site-theirs"
    ]
    assert admin_api.get(ALERTS, {"state": "resolved"}).json()["results"] == []
    assert_error(admin_api.get(ALERTS, {"state": "bogus"}), 400, field="state")


def test_another_sites_alert_is_a_404_for_every_verb(two_sites):
    mine, theirs = two_sites
    client = member(mine, MembershipRole.MANAGER)
    alert = Alert.objects.get(site=theirs)

    assert client.get(f"{ALERTS}/{alert.pk}").status_code == 404
    for verb in ("acknowledge", "resolve", "notes"):
        assert client.post(f"{ALERTS}/{alert.pk}/{verb}", {"text": "hi"}, format="json").status_code == 404
    alert.refresh_from_db()
    assert alert.acknowledged_at is None and alert.resolved_at is None


def test_a_viewer_may_read_but_not_handle_an_alert(two_sites):
    mine, _ = two_sites
    client = member(mine, MembershipRole.VIEWER)
    alert = Alert.objects.get(site=mine)

    assert client.get(f"{ALERTS}/{alert.pk}").status_code == 200
    assert client.post(f"{ALERTS}/{alert.pk}/acknowledge").status_code == 403
    assert Alert.objects.get(pk=alert.pk).acknowledged_at is None


def test_a_manager_acknowledges_notes_and_resolves_an_alert_each_audited(two_sites):
    mine, _ = two_sites
    client = member(mine, MembershipRole.MANAGER)
    alert = Alert.objects.get(site=mine)

    ack = client.post(f"{ALERTS}/{alert.pk}/acknowledge")
    again = client.post(f"{ALERTS}/{alert.pk}/acknowledge")
    note = client.post(f"{ALERTS}/{alert.pk}/notes", {"text": "Engineer on the way"}, format="json")
    resolved = client.post(f"{ALERTS}/{alert.pk}/resolve")

    assert ack.status_code == 200 and ack.json()["state"] == "acknowledged"
    assert again.status_code == 200
    assert note.status_code == 201 and note.json()["notes"][0]["text"] == "Engineer on the way"
    assert resolved.json()["state"] == "resolved"
    assert resolved.json()["resolved_by"] == client.user.username
    events = list(
        AuditLog.objects.filter(event_type__startswith="alert.", actor=client.user).values_list(
            "event_type", flat=True
        )
    )
    assert sorted(events) == ["alert.acknowledged", "alert.note_added", "alert.resolved"]


@pytest.mark.parametrize(("body", "field"), [({}, "text"), ({"text": ""}, "text"), ({"text": 5}, "text")])
def test_a_bad_note_is_a_400_naming_the_field(two_sites, body, field):
    mine, _ = two_sites
    client = member(mine, MembershipRole.MANAGER)
    alert = Alert.objects.get(site=mine)

    assert_error(client.post(f"{ALERTS}/{alert.pk}/notes", body, format="json"), 400, field=field)
    assert not AlertNote.objects.exists()


def test_anonymous_and_devices_get_no_alerts(two_sites, api_client):
    assert api_client.get(ALERTS).status_code == 401


# --- Admin ----------------------------------------------------------------------------------


def test_the_admin_lists_alerts_and_acknowledges_them_through_the_service(two_sites, admin_browser):
    changelist = "/admin/monitoring_app/alert/"
    assert admin_browser.get(changelist).status_code == 200
    alert = Alert.objects.first()
    assert admin_browser.get(f"{changelist}{alert.pk}/change/").status_code == 200

    response = admin_browser.post(
        changelist, {"action": "acknowledge_alerts", "_selected_action": [alert.pk]}, follow=True
    )

    assert response.status_code == 200
    assert Alert.objects.get(pk=alert.pk).acknowledged_at is not None
    assert AuditLog.objects.filter(event_type="alert.acknowledged").count() == 1


def test_the_fleet_dashboard_shows_the_callers_sites_only(two_sites, client, django_assert_max_num_queries):
    mine, theirs = two_sites
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=mine, role=MembershipRole.MANAGER)
    client.force_login(user)

    response = client.get("/admin/monitoring_app/alert/fleet/")

    assert response.status_code == 200
    text = response.content.decode()
    assert "site-mine" in text and "site-theirs" not in text


def test_the_admin_sees_the_whole_fleet_on_the_dashboard(
    two_sites, admin_browser, django_assert_max_num_queries
):
    with django_assert_max_num_queries(15):
        response = admin_browser.get("/admin/monitoring_app/alert/fleet/")

    assert response.status_code == 200
    text = response.content.decode()
    assert "site-mine" in text and "site-theirs" in text
    assert 'id="open-alerts"' in text


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/admin/monitoring_app/alert/fleet/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize(
    ("role", "offered"), [(MembershipRole.VIEWER, False), (MembershipRole.MANAGER, True)]
)
def test_the_admin_offers_alert_handling_only_to_those_who_may_handle(two_sites, client, role, offered):
    from django.urls import reverse

    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=two_sites[0], role=role)
    client.force_login(user)

    page = client.get(reverse("admin:monitoring_app_alert_changelist"))

    assert page.status_code == 200
    form = page.context["action_form"]  # None when no action is offered at all
    actions = dict(form.fields["action"].choices) if form else {}
    assert ("acknowledge_alerts" in actions, "resolve_alerts" in actions) == (offered, offered)
