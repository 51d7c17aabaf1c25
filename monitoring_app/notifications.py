"""Alert notifications, delivered at least once.

Each alert gets one Notification row per channel when it opens (email to the site's active
managers; the webhook when HOMEPOT_MONITORING_WEBHOOK_URL is set), in the evaluator's
transaction. The delivery task sends the due ones:

1. **Claim** one due row in the database: `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
   LOCKED LIMIT 1)` sets it `sending`, counts the attempt and pushes `next_attempt_at` a
   lease ahead. Two workers never take the same row; a worker that dies mid-send leaves it
   `sending` until the lease lapses, and then it is due again.
2. **Send**, outside any transaction (a slow mail server holds no lock).
3. **Record the outcome**: `sent` (and the alert's `notified_at`) only after the send
   succeeded; on failure `retrying` with an exponential backoff with jitter, or `failed`
   with the last error after HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS (audited as
   notification.failed). `skipped` when there is nobody to tell (no manager with an email
   address, no webhook configured any more) or the alert resolved before it was delivered.

At-least-once, not exactly-once: a send that succeeded but whose worker died before
recording it is sent again after the lease. Receivers can deduplicate by the payload's `id`.
"""

import datetime
import json
import logging
import random
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.scoping import require_site_access
from homepot import metrics
from homepot.errors import ServiceError
from monitoring_app.choices import (
    NOTIFICATION_OPEN,
    AuditEvent,
    NotificationChannel,
    NotificationStatus,
)
from monitoring_app.models import Alert, Notification
from monitoring_app.services import audit_record

logger = logging.getLogger(__name__)

_ERROR_MAX_CHARS = 2000


class DeliveryFailed(Exception):
    """A send that did not go through; its text is kept as the notification's last error."""


class NothingToSend(Exception):
    """Nobody to tell on this channel (recorded as `skipped`)."""


# --- Creating ------------------------------------------------------------------------------


def channels() -> list[str]:
    """The channels a new alert is told on: email always (skipped at send time when the site
    has no manager with an address), the webhook when one is configured."""
    names = [NotificationChannel.EMAIL]
    if settings.HOMEPOT_MONITORING_WEBHOOK_URL:
        names.append(NotificationChannel.WEBHOOK)
    return names


def notifications_create(*, alert_ids: list[int], now: datetime.datetime) -> int:
    """One pending notification per alert and channel, due now: ONE INSERT ... SELECT over
    the given alerts. Call in the transaction that opened them. Safe to repeat (the unique
    (alert, channel) constraint and ON CONFLICT DO NOTHING). Returns how many were created.
    """
    if not alert_ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO monitoring_app_notification
                   (alert_id, channel, status, attempts, next_attempt_at, last_error, created_at)
               SELECT a.id, c.channel, %(pending)s, 0, %(now)s, '', %(now)s
               FROM unnest(%(alerts)s::bigint[]) AS a(id), unnest(%(channels)s::text[]) AS c(channel)
               ON CONFLICT (alert_id, channel) DO NOTHING""",
            {"pending": NotificationStatus.PENDING, "now": now, "alerts": alert_ids, "channels": channels()},
        )
        return cursor.rowcount


# --- Sending ---------------------------------------------------------------------------------


def _manager_emails(alert: Alert) -> list[str]:
    from accounts.models import SiteMembership

    return sorted(
        set(
            SiteMembership.objects.filter(
                site_id=alert.site_id, role=MembershipRole.MANAGER, user__is_active=True
            )
            .exclude(user__email="")
            .values_list("user__email", flat=True)
        )
    )


def alert_payload(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "site": alert.site.site_id,
        "device": alert.device.device_id if alert.device else None,
        "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def _send_email(alert: Alert) -> None:
    recipients = _manager_emails(alert)
    if not recipients:
        raise NothingToSend("no active manager of the site has an email address")
    try:
        send_mail(
            subject=f"[HOMEPOT] {alert.get_severity_display()}: {alert.get_kind_display()} "
            f"at {alert.site.name}",
            message=f"{alert.message}\n\nSite: {alert.site}\nOpened: {alert.opened_at:%Y-%m-%d %H:%M} UTC\n",
            from_email=None,
            recipient_list=recipients,
            fail_silently=False,  # a failure must be seen, so that it is retried
        )
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        raise DeliveryFailed(f"email: {type(exc).__name__}: {exc}") from exc


def _post_webhook(alert: Alert) -> None:
    url = settings.HOMEPOT_MONITORING_WEBHOOK_URL
    if not url:
        raise NothingToSend("no webhook is configured any more")
    if not url.startswith(("http://", "https://")):
        raise DeliveryFailed(f"webhook URL {url!r} is not http(s)")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=json.dumps(alert_payload(alert)).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "HOMEPOT-monitoring"},
        method="POST",
    )
    try:
        timeout = settings.HOMEPOT_MONITORING_WEBHOOK_TIMEOUT_SECONDS
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            if not 200 <= reply.status < 300:
                raise DeliveryFailed(f"webhook answered HTTP {reply.status}")
    except urllib.error.HTTPError as exc:  # 4xx/5xx: before URLError, its parent
        raise DeliveryFailed(f"webhook answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        raise DeliveryFailed(f"webhook: {type(exc).__name__}: {exc}") from exc


_SENDERS = {NotificationChannel.EMAIL: _send_email, NotificationChannel.WEBHOOK: _post_webhook}


def notification_backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: exponential (the base doubling per attempt),
    capped, with jitter (half fixed, half random, so the notifications of an outage that
    failed together do not all come back together)."""
    base = settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_SECONDS
    cap = settings.HOMEPOT_MONITORING_NOTIFY_BACKOFF_MAX_SECONDS
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 (jitter, not a secret)


_CLAIM_SQL = """
    UPDATE monitoring_app_notification SET status = %(sending)s, attempts = attempts + 1,
           last_attempt_at = %(now)s, next_attempt_at = %(lease_until)s
    WHERE id = (
        SELECT id FROM monitoring_app_notification
        WHERE status = ANY(%(open)s) AND next_attempt_at <= %(now)s
        ORDER BY next_attempt_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, attempts
"""


def _claim_next(now: datetime.datetime) -> tuple[int, int] | None:
    """Take the most overdue notification for this sender (its own short transaction, so the
    claim is visible to every other sender at once). None when nothing is due."""
    lease = datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_NOTIFY_LEASE_SECONDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            {
                "sending": NotificationStatus.SENDING,
                "now": now,
                "lease_until": now + lease,
                "open": list(NOTIFICATION_OPEN),
            },
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def _give_up_on_lost_sends(now: datetime.datetime) -> None:
    """A notification whose last allowed attempt was claimed by a worker that never came back
    (its lease lapsed) is failed rather than tried once more than allowed."""
    lost = Notification.objects.filter(
        status=NotificationStatus.SENDING,
        next_attempt_at__lte=now,
        attempts__gte=settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS,
    )
    for notification_id in lost.values_list("pk", flat=True):
        _record_failure(notification_id, None, "the worker sending it stopped before it finished", now)


def _record_failure(notification_id: int, attempts: int | None, error: str, now: datetime.datetime) -> str:
    """Retry later, or give up; only if this sender still holds the claim (a lapsed claim
    taken over by another sender is theirs to record). Returns the new status, or ""."""
    with transaction.atomic():
        claimed = Notification.objects.select_for_update(of=("self",)).filter(
            pk=notification_id, status=NotificationStatus.SENDING
        )
        if attempts is not None:
            claimed = claimed.filter(attempts=attempts)
        notification = claimed.select_related("alert__site", "alert__device").first()
        if notification is None:
            return ""
        notification.last_error = error[:_ERROR_MAX_CHARS]
        if notification.attempts >= settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS:
            notification.status = NotificationStatus.FAILED
            notification.next_attempt_at = None
            alert = notification.alert
            audit_record(
                event_type=AuditEvent.NOTIFICATION_FAILED,
                site=alert.site,
                device=alert.device,
                description=f"{notification.get_channel_display()} for alert {alert.pk} failed after "
                f"{notification.attempts} attempt(s): {notification.last_error}",
                new_values={
                    "alert": alert.pk,
                    "notification": notification.pk,
                    "channel": notification.channel,
                    "attempts": notification.attempts,
                    "last_error": notification.last_error,
                },
            )
        else:
            notification.status = NotificationStatus.RETRYING
            notification.next_attempt_at = now + datetime.timedelta(
                seconds=notification_backoff(notification.attempts)
            )
        notification.save(update_fields=["status", "next_attempt_at", "last_error"])
        return notification.status


def _record_sent(notification_id: int, now: datetime.datetime) -> None:
    # Whoever's claim it is now: the message went out, and that is what the row must say.
    with transaction.atomic():
        updated = (
            Notification.objects.filter(pk=notification_id)
            .exclude(status=NotificationStatus.SENT)
            .update(status=NotificationStatus.SENT, sent_at=now, next_attempt_at=None, last_error="")
        )
        if updated:
            Alert.objects.filter(notifications__pk=notification_id, notified_at__isnull=True).update(
                notified_at=now
            )


def _record_skipped(notification_id: int, attempts: int, reason: str) -> None:
    Notification.objects.filter(
        pk=notification_id, status=NotificationStatus.SENDING, attempts=attempts
    ).update(status=NotificationStatus.SKIPPED, next_attempt_at=None, last_error=reason)


@dataclass
class DeliveryResult:
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> None:
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        metrics.notifications.labels(outcome=status).inc()


def notifications_deliver_due(*, limit: int | None = None) -> DeliveryResult:
    """Send due notifications one by one, at most `limit` (HOMEPOT_MONITORING_NOTIFY_BATCH):
    claim, send, record (see the module's docstring). Safe to run in several workers at once:
    each claims its own rows. Not idempotent by nature: every run may send.
    """
    limit = settings.HOMEPOT_MONITORING_NOTIFY_BATCH if limit is None else limit
    result = DeliveryResult()
    _give_up_on_lost_sends(timezone.now())
    for _ in range(limit):
        now = timezone.now()
        claimed = _claim_next(now)
        if claimed is None:
            break
        notification_id, attempts = claimed
        notification = Notification.objects.select_related("alert__site", "alert__device").get(
            pk=notification_id
        )
        if notification.alert.resolved_at is not None and notification.alert.notified_at is None:
            # Over before anyone was told: not worth a page now (bounded noise for flapping).
            _record_skipped(notification_id, attempts, "the alert resolved before it was delivered")
            result.count(NotificationStatus.SKIPPED)
            continue
        try:
            _SENDERS[notification.channel](notification.alert)
        except NothingToSend as exc:
            _record_skipped(notification_id, attempts, str(exc))
            result.count(NotificationStatus.SKIPPED)
        except DeliveryFailed as exc:
            logger.warning("Notification %s (attempt %s) failed: %s", notification_id, attempts, exc)
            result.count(_record_failure(notification_id, attempts, str(exc), timezone.now()) or "lost")
        else:
            _record_sent(notification_id, timezone.now())
            result.count(NotificationStatus.SENT)
    return result


# --- Operator action ---------------------------------------------------------------------------

_RETRYABLE = (NotificationStatus.FAILED, NotificationStatus.RETRYING, NotificationStatus.PENDING)


def notification_retry(*, actor, notification: Notification) -> Notification:
    """Make a notification due now (audited as notification.retried) and enqueue the delivery
    task after commit. A `failed` one gets a fresh set of attempts. Refused (ServiceError) for
    one that is sent, skipped, or being sent right now. Needs change rights on the alert's
    site (PermissionDenied)."""
    require_site_access(actor, notification.alert.site, "change")
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(of=("self",))
            .select_related("alert__site", "alert__device")
            .get(pk=notification.pk)
        )
        if notification.status not in _RETRYABLE:
            raise ServiceError(
                f"It is {notification.get_status_display().lower()}; there is nothing to retry."
            )
        old = {"status": notification.status, "attempts": notification.attempts}
        if notification.status == NotificationStatus.FAILED:
            notification.attempts = 0
        notification.status = NotificationStatus.RETRYING
        notification.next_attempt_at = timezone.now()
        notification.save(update_fields=["status", "attempts", "next_attempt_at"])
        alert = notification.alert
        audit_record(
            event_type=AuditEvent.NOTIFICATION_RETRIED,
            actor=actor,
            site=alert.site,
            device=alert.device,
            description=f"{notification.get_channel_display()} for alert {alert.pk} retried now",
            old_values=old,
            new_values={"alert": alert.pk, "notification": notification.pk, "status": notification.status},
        )
        transaction.on_commit(_enqueue_delivery)
    return notification


def _enqueue_delivery() -> None:
    # Only a head start: the beat runs the delivery every 15 s anyway, so a broker that is
    # away is logged, never turned into an error after the change has committed.
    from monitoring_app.tasks import deliver_notifications

    try:
        deliver_notifications.delay()
    except Exception:  # noqa: BLE001 - any broker failure; the beat delivers
        logger.warning("Could not enqueue the notification delivery; the beat will run it", exc_info=True)
