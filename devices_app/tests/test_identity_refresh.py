"""The identities' refresh (devices_app.identity_store, "The refresh"): beat rewrites the Redis
entries of the devices in use from fresh PostgreSQL reads, so a steady terminal is answered
from Redis instead of missing once per bound, and nothing the bound and the tombstones
guarantee is loosened.

Real Redis and PostgreSQL; terminals speak through the fast path gunicorn serves, operators
through the API; the refresh runs as beat runs it (the task), or in its two halves (the page
read, then its write) where a test puts a commit between them. Invalidations run on commit,
so each change is made inside `django_capture_on_commit_callbacks(execute=True)`."""

import datetime
import importlib

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app import identity_store
from devices_app.models import Device, DeviceCredential
from devices_app.services import device_identities_in_use_page, device_identities_refresh
from devices_app.tasks import refresh_identities
from devices_app.tests.test_identity_store import (
    NOWHERE,
    _beat,
    _operator,
    _revoke_with_redis_away,
    _terminal,
)

pytestmark = pytest.mark.django_db


def _redis() -> redis.Redis:
    return redis.Redis.from_url(django_settings.REDIS_URL)


def _credential_key(device) -> str:
    return identity_store.credential_key(DeviceCredential.hash_key(device.secret))


def _entries(device) -> tuple[bytes | None, bytes | None]:
    return tuple(_redis().mget(_credential_key(device), identity_store.device_key(device.pk)))


def _expire(device) -> None:
    """What the bound does to a steady terminal's entries: they are gone."""
    _redis().delete(_credential_key(device), identity_store.device_key(device.pk))


def _read_page(read_at_ms=None):
    """The refresh's first half: one page read from PostgreSQL after Redis's clock."""
    client = identity_store.refresh_client()
    identity_store.refresh_prepare(client)
    read_at_ms = identity_store.redis_time_ms(client) if read_at_ms is None else read_at_ms
    page, _, _ = device_identities_in_use_page(after_pk=0, batch_size=1000, read_at_ms=read_at_ms)
    return client, page


def _revoke_through_api(admin_user, device) -> None:
    answer = _operator(admin_user).delete(f"/api/v1/devices/{device.device_id}/credential")
    assert answer.status_code == 204


def test_a_steady_terminal_whose_entries_expired_is_answered_from_redis_after_a_refresh():
    device = _terminal()
    assert _beat(device).status_code == 200  # read from PostgreSQL, stored, sighted
    _expire(device)

    outcome = refresh_identities()

    assert (outcome["written"], outcome["failed"]) == (1, False)
    with CaptureQueriesContext(connection) as queries:
        answer = _beat(device)
    assert answer.status_code == 200 and answer.json()["status"] == "online"
    assert len(queries) == 0


def test_without_the_refresh_the_expired_terminal_goes_to_postgresql():
    """The test above can fail: the same terminal, no refresh, asks PostgreSQL."""
    device = _terminal()
    assert _beat(device).status_code == 200
    _expire(device)

    with CaptureQueriesContext(connection) as queries:
        assert _beat(device).status_code == 200
    assert len(queries) > 0


def test_a_refreshed_entry_expires_the_bound_after_redis_time_taken_before_its_read(settings):
    device = _terminal()
    client = identity_store.refresh_client()
    before = identity_store.redis_time_ms(client)

    device_identities_refresh()

    after = identity_store.redis_time_ms(client)
    bound_ms = settings.HOMEPOT_DEVICES_IDENTITY_SECONDS * 1000
    for key in (_credential_key(device), identity_store.device_key(device.pk)):
        expires_at = identity_store.redis_time_ms(client) + client.pttl(key)
        # The expiry counts from a moment between the run's start and its end, taken before
        # the read: never more than the bound after the PostgreSQL read the entry carries.
        assert before + bound_ms - 2 <= expires_at <= after + bound_ms + 2


def test_a_page_read_earlier_writes_entries_that_expire_the_bound_after_that_read(settings):
    settings.HOMEPOT_DEVICES_IDENTITY_SECONDS = 4
    device = _terminal()
    client = identity_store.refresh_client()
    read_at = identity_store.redis_time_ms(client) - 1000
    _, page = _read_page(read_at_ms=read_at)  # as if read 1 s ago: 3 s of the bound are left

    assert identity_store.refresh_write(client, page).written == 1
    for key in (_credential_key(device), identity_store.device_key(device.pk)):
        assert 0 < client.pttl(key) <= 3000


def test_a_write_later_than_half_a_device_tombstone_after_the_read_writes_nothing():
    device = _terminal()
    client = identity_store.refresh_client()
    late = identity_store.redis_time_ms(client) - identity_store.REFRESH_WRITE_WITHIN_MS - 50
    _, page = _read_page(read_at_ms=late)

    counts = identity_store.refresh_write(client, page)

    assert (counts.written, counts.late) == (0, 1)
    assert _entries(device) == (None, None)


def test_an_entry_from_a_later_read_is_not_shortened_by_the_refresh():
    device = _terminal()
    client, page = _read_page()
    assert _beat(device).status_code == 200  # a request's own read and fill, after the page's
    kept = client.pttl(_credential_key(device))
    page.read_at_ms -= 2000  # the page's read is the older one

    identity_store.refresh_write(client, page)

    assert client.pttl(_credential_key(device)) > kept - 1500


def test_a_revocation_committed_between_the_refresh_read_and_its_write_wins(
    admin_user, django_capture_on_commit_callbacks
):
    device = _terminal()
    assert _beat(device).status_code == 200
    client, page = _read_page()  # the credential is still usable in this read

    with django_capture_on_commit_callbacks(execute=True):
        _revoke_through_api(admin_user, device)
    counts = identity_store.refresh_write(client, page)

    assert (counts.written, counts.tombstoned) == (0, 1)
    assert _entries(device)[0] == identity_store.TOMBSTONE
    assert _beat(device).status_code == 401


def test_a_revocation_committed_after_the_refresh_write_replaces_what_it_wrote(
    admin_user, django_capture_on_commit_callbacks
):
    device = _terminal()
    assert _beat(device).status_code == 200
    client, page = _read_page()
    assert identity_store.refresh_write(client, page).written == 1

    with django_capture_on_commit_callbacks(execute=True):
        _revoke_through_api(admin_user, device)

    assert _beat(device).status_code == 401
    refresh_identities()  # the next beat: the revoked credential is not written back
    assert _entries(device)[0] == identity_store.TOMBSTONE
    assert _beat(device).status_code == 401


def test_a_status_change_committed_during_a_refresh_reaches_the_next_heartbeat(
    admin_user, django_capture_on_commit_callbacks
):
    device = _terminal()
    assert _beat(device).json()["status"] == "online"
    client, page = _read_page()  # reads the device online

    with django_capture_on_commit_callbacks(execute=True):
        answer = _operator(admin_user).patch(
            f"/api/v1/devices/{device.device_id}", {"status": "maintenance"}, format="json"
        )
    assert answer.status_code == 200
    assert identity_store.refresh_write(client, page).tombstoned == 1

    assert _beat(device).json()["status"] == "maintenance"
    refresh_identities()  # the next refresh leaves the tombstone too: requests refill after it
    assert _entries(device)[1] == identity_store.TOMBSTONE
    assert _beat(device).json()["status"] == "maintenance"


def test_a_device_moved_to_another_site_gets_its_new_site_from_the_refresh():
    """A change whose tombstone never reached Redis: the refresh replaces the stale entry."""
    device = _terminal()
    assert _beat(device).status_code == 200
    other = _terminal().site
    Device.objects.filter(pk=device.pk).update(site=other)  # no tombstone written

    refresh_identities()

    assert _entries(device)[1].split(b"|")[1] == str(other.pk).encode()


def test_a_credential_deleted_without_its_tombstone_is_never_extended_by_the_refresh():
    device = _terminal()
    assert _beat(device).status_code == 200
    client = _redis()
    left = client.pttl(_credential_key(device))
    DeviceCredential.objects.filter(device=device).delete()  # as if its tombstone was lost

    outcome = refresh_identities()

    assert outcome["written"] == 0
    assert 0 < client.pttl(_credential_key(device)) <= left  # expires within its own bound


def test_a_revocation_that_could_not_reach_redis_is_refused_after_the_next_refresh(
    settings, django_capture_on_commit_callbacks, caplog
):
    device = _terminal()
    assert _beat(device).status_code == 200 and _beat(device).status_code == 200
    _revoke_with_redis_away(device, settings, django_capture_on_commit_callbacks, caplog)
    assert _beat(device).status_code == 200  # the documented staleness, until ...

    assert refresh_identities()["revoked"] == 1

    assert _beat(device).status_code == 401  # ... the next refresh, well within the bound


def test_the_refresh_writes_no_sighting_so_an_unsighted_device_still_goes_to_postgresql():
    device = _terminal()

    assert refresh_identities()["written"] == 1

    assert _entries(device)[0] is not None
    assert not _redis().exists(identity_store.sighting_key(device.pk))
    with CaptureQueriesContext(connection) as queries:
        assert _beat(device).status_code == 200
    assert len(queries) > 0  # read from PostgreSQL, as without the refresh


def test_devices_not_seen_within_the_offline_threshold_are_left_to_expire():
    quiet = _terminal()
    Device.objects.filter(pk=quiet.pk).update(last_seen=timezone.now() - datetime.timedelta(hours=1))
    _terminal()

    outcome = refresh_identities()

    assert (outcome["devices"], outcome["written"]) == (1, 1)
    assert _entries(quiet) == (None, None)


def test_the_refresh_walks_the_fleet_in_pages():
    devices = [_terminal() for _ in range(5)]

    outcome = device_identities_refresh(batch_size=2).as_dict()

    assert (outcome["devices"], outcome["pages"], outcome["written"]) == (5, 3, 5)
    assert all(None not in _entries(device) for device in devices)


def test_with_redis_away_the_refresh_logs_and_returns_and_the_next_one_works(settings, caplog):
    device = _terminal()
    reachable = settings.REDIS_URL
    settings.REDIS_URL = NOWHERE

    outcome = refresh_identities()

    assert outcome["failed"] is True and outcome["written"] == 0
    assert "Identity refresh stopped after 0 devices" in caplog.text
    settings.REDIS_URL = reachable
    assert refresh_identities()["written"] == 1
    assert None not in _entries(device)


def test_beat_schedules_the_refresh_only_when_it_is_on(settings):
    from devices_app import schedule

    configured = settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS
    try:
        settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS = 45
        assert importlib.reload(schedule).BEAT_SCHEDULE["devices-refresh-identities"]["schedule"] == 45
        settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS = 0
        assert importlib.reload(schedule).BEAT_SCHEDULE == {}
    finally:
        settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS = configured
        importlib.reload(schedule)
