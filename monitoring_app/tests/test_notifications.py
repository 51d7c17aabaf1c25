"""Alert notifications are delivered at least once: claimed in the database, marked sent only
after the send succeeded, retried with backoff, failed (and visible) after the last attempt.
Against real peers on loopback: a webhook receiver and an SMTP server."""

import datetime
import threading

import pytest
from django.core import mail
from django.db import close_old_connections
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.tests.factories import DeviceFactory
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.choices import NOTIFICATION_OPEN, AuditEvent, NotificationStatus
from monitoring_app.models import Alert, AuditLog, Notification
from monitoring_app.notifications import notification_backoff, notifications_deliver_due
from monitoring_app.tests.peers import SmtpPeer, WebhookPeer
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def thresholds(settings):
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 300
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION = 0.6
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES = 2
    settings.HOMEPOT_MONITORING_WEBHOOK_URL = ""
    settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS = 4
    settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_SECONDS = 30.0
    settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_MAX_SECONDS = 3600.0


@pytest.fixture
def site():
    return SiteFactory()


@pytest.fixture
def manager(site):
    user = UserFactory(email="manager@example.com")
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    return user


def open_device_alert(site) -> Alert:
    """One device offline past the threshold at a site that is otherwise up."""
    DeviceFactory(
        site=site,
        status=DeviceStatus.OFFLINE,
        connectivity_changed_at=timezone.now() - datetime.timedelta(minutes=10),
    )
    for _ in range(2):
        DeviceFactory(site=site, status=DeviceStatus.ONLINE, last_seen=timezone.now())
    alerts_evaluate()
    return Alert.objects.get()


def notification(channel) -> Notification:
    return Notification.objects.get(channel=channel)


def make_due(channel):
    """What the backoff would do after its wait: the retry comes due (set, not waited for)."""
    Notification.objects.filter(channel=channel, status__in=NOTIFICATION_OPEN).update(
        next_attempt_at=timezone.now()
    )


def test_opening_an_alert_creates_one_pending_notification_per_channel(site, settings):
    settings.HOMEPOT_MONITORING_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    alert = open_device_alert(site)
    alerts_evaluate()  # a repeat opens nothing and adds nothing

    assert sorted(alert.notifications.values_list("channel", "status")) == [
        ("email", "pending"),
        ("webhook", "pending"),
    ]


def test_a_webhook_that_fails_first_is_retried_with_backoff_and_then_delivered(site, manager, settings):
    with WebhookPeer(script=[500, 200]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        alert = open_device_alert(site)

        before = timezone.now()
        notifications_deliver_due()

        webhook = notification("webhook")
        assert webhook.status == NotificationStatus.RETRYING
        assert webhook.attempts == 1 and "HTTP 500" in webhook.last_error
        # First retry after 15-30 s (the 30 s base, half of it jitter), not at once.
        assert before + datetime.timedelta(seconds=15) <= webhook.next_attempt_at
        assert webhook.next_attempt_at <= timezone.now() + datetime.timedelta(seconds=30)
        assert notification("email").status == NotificationStatus.SENT
        assert len(mail.outbox) == 1 and mail.outbox[0].to == ["manager@example.com"]
        # Not due yet: another run sends nothing.
        assert notifications_deliver_due().outcomes == {}

        make_due("webhook")
        assert notifications_deliver_due().outcomes == {"sent": 1}

    webhook = notification("webhook")
    assert webhook.status == NotificationStatus.SENT and webhook.attempts == 2 and webhook.sent_at
    assert webhook.last_error == ""
    assert [body["id"] for body in hook.received] == [alert.pk, alert.pk]
    assert hook.delivered()[0]["kind"] == "device_offline"
    assert Alert.objects.get().notified_at is not None
    assert len(mail.outbox) == 1  # the email was not sent again
    assert notifications_deliver_due().outcomes == {}


def test_a_mail_server_that_is_busy_first_gets_the_mail_on_the_retry(site, manager, settings):
    with SmtpPeer(script=["busy", "ok"]) as smtp:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", smtp.port, 5
        alert = open_device_alert(site)

        notifications_deliver_due()
        email = notification("email")
        assert email.status == NotificationStatus.RETRYING and email.attempts == 1
        assert "451" in email.last_error and not smtp.messages
        assert Alert.objects.get().notified_at is None  # nobody has been told yet

        make_due("email")
        notifications_deliver_due()

    email = notification("email")
    assert email.status == NotificationStatus.SENT and email.attempts == 2
    [message] = smtp.messages
    assert message["to"] == ["manager@example.com"] and alert.message in message["data"]


def test_a_peer_that_always_fails_ends_failed_with_its_last_error_and_is_audited(site, manager, settings):
    settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS = 3
    with WebhookPeer(script=[503]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        open_device_alert(site)
        for _ in range(3):
            make_due("webhook")
            notifications_deliver_due()
        make_due("webhook")
        assert notifications_deliver_due().outcomes == {}  # failed is final: no fourth attempt

    webhook = notification("webhook")
    assert webhook.status == NotificationStatus.FAILED and webhook.attempts == 3
    assert "HTTP 503" in webhook.last_error and webhook.next_attempt_at is None
    assert len(hook.received) == 3
    [row] = AuditLog.objects.filter(event_type=AuditEvent.NOTIFICATION_FAILED)
    assert row.new_values["attempts"] == 3 and row.site_id == site.pk


def test_nobody_to_mail_and_an_alert_over_before_delivery_are_skipped(site, settings):
    alert = open_device_alert(site)  # no manager with an address
    notifications_deliver_due()
    email = notification("email")
    assert email.status == NotificationStatus.SKIPPED and "no active manager" in email.last_error

    settings.HOMEPOT_MONITORING_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    Notification.objects.create(alert=alert, channel="webhook", next_attempt_at=timezone.now())
    Alert.objects.update(resolved_at=timezone.now())
    notifications_deliver_due()
    assert notification("webhook").status == NotificationStatus.SKIPPED


def test_backoff_grows_exponentially_with_jitter_and_is_capped(settings):
    settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_SECONDS = 10.0
    settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_MAX_SECONDS = 100.0
    for attempt, full in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)):
        delays = {notification_backoff(attempt) for _ in range(20)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_never_send_the_same_notification(settings):
    """Four threads deliver the same 30 due notifications at once against a slow-ish peer:
    every one is posted exactly once (each is claimed FOR UPDATE SKIP LOCKED)."""
    with WebhookPeer(script=[200]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        sites = [SiteFactory() for _ in range(30)]
        for s in sites:
            DeviceFactory(
                site=s,
                status=DeviceStatus.OFFLINE,
                connectivity_changed_at=timezone.now() - datetime.timedelta(minutes=10),
            )
            DeviceFactory(site=s, status=DeviceStatus.ONLINE, last_seen=timezone.now())
            DeviceFactory(site=s, status=DeviceStatus.ONLINE, last_seen=timezone.now())
        alerts_evaluate()
        Notification.objects.filter(channel="email").delete()
        start = threading.Barrier(4)
        errors = []

        def sender():
            try:
                start.wait()
                notifications_deliver_due()
            except Exception as exc:  # noqa: BLE001 (reported to the test below)
                errors.append(exc)
            finally:
                close_old_connections()

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert not errors
    ids = [body["id"] for body in hook.received]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


# --- Admin ------------------------------------------------------------------------------------

NOTIFICATIONS = "/admin/monitoring_app/notification/"


def failed_webhook(site, settings) -> Notification:
    settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS = 1
    with WebhookPeer(script=[500]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        open_device_alert(site)
        notifications_deliver_due()
    return notification("webhook")


def test_the_admin_lists_notifications_by_status_and_shows_them_on_the_alert(admin_browser, site, settings):
    failed = failed_webhook(site, settings)

    response = admin_browser.get(NOTIFICATIONS, {"status": "failed"})
    assert [row.pk for row in response.context["cl"].result_list] == [failed.pk]
    assert "webhook answered HTTP 500" in response.text
    assert '<span class="hp-badge hp-badge--bad">Failed</span>' in response.text
    assert admin_browser.get(NOTIFICATIONS, {"status": "sent"}).context["cl"].result_list.count() == 0

    alert_page = admin_browser.get(f"/admin/monitoring_app/alert/{failed.alert_id}/change/")
    assert alert_page.status_code == 200 and "webhook answered HTTP 500" in alert_page.text


def test_retry_now_makes_a_failed_notification_due_again_and_is_audited(
    admin_browser, admin_user, site, settings
):
    failed = failed_webhook(site, settings)

    response = admin_browser.post(
        NOTIFICATIONS, {"action": "retry_now", "_selected_action": [failed.pk]}, follow=True
    )

    assert "1 notification will be sent again now." in response.text
    failed.refresh_from_db()
    assert failed.status == NotificationStatus.RETRYING and failed.attempts == 0
    assert failed.next_attempt_at <= timezone.now()
    [row] = AuditLog.objects.filter(event_type=AuditEvent.NOTIFICATION_RETRIED)
    assert row.actor_id == admin_user.pk and row.old_values == {"status": "failed", "attempts": 1}

    with WebhookPeer(script=[200]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        notifications_deliver_due()
    assert notification("webhook").status == NotificationStatus.SENT and len(hook.delivered()) == 1


def test_retry_now_refuses_a_sent_notification_with_a_message(admin_browser, site, manager):
    open_device_alert(site)
    notifications_deliver_due()
    sent = notification("email")

    response = admin_browser.post(
        NOTIFICATIONS, {"action": "retry_now", "_selected_action": [sent.pk]}, follow=True
    )

    assert "there is nothing to retry" in response.text
    assert not AuditLog.objects.filter(event_type=AuditEvent.NOTIFICATION_RETRIED).exists()


def test_a_manager_sees_only_their_sites_notifications(client, site, settings):
    mine = failed_webhook(site, settings)
    theirs = Notification.objects.create(
        alert=open_device_alert_elsewhere(), channel="email", next_attempt_at=timezone.now()
    )
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    client.force_login(user)

    listed = {row.pk for row in client.get(NOTIFICATIONS).context["cl"].result_list}

    assert mine.pk in listed and theirs.pk not in listed
    assert client.get(f"{NOTIFICATIONS}{theirs.pk}/change/").status_code == 302  # not found: redirected


def open_device_alert_elsewhere() -> Alert:
    other = SiteFactory()
    return Alert.objects.create(
        site=other,
        device=DeviceFactory(site=other),
        kind="device_offline",
        severity="warning",
        message="elsewhere",
        opened_at=timezone.now(),
        last_seen_at=timezone.now(),
    )


def test_retry_now_with_the_broker_away_still_answers_and_the_beat_sends_it(
    admin_browser, site, settings, django_capture_on_commit_callbacks
):
    from homepot.tests.celery_worker import celery_broker_away

    failed = failed_webhook(site, settings)
    with celery_broker_away(), django_capture_on_commit_callbacks(execute=True):
        response = admin_browser.post(
            NOTIFICATIONS, {"action": "retry_now", "_selected_action": [failed.pk]}, follow=True
        )

    assert response.status_code == 200
    assert "1 notification will be sent again now." in response.text
    failed.refresh_from_db()
    assert failed.status == NotificationStatus.RETRYING
    with WebhookPeer(script=[200]) as hook:  # the beat's next run
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        notifications_deliver_due()
    assert notification("webhook").status == NotificationStatus.SENT
