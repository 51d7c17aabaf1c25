"""Concurrent writes through the API, on PostgreSQL, with real threads.

Each request runs in a thread of its own (its own database connection, its own API
client); the threads of a round start together on a barrier, so the two transactions
overlap. Every audited write takes its row locks first and the audit chain lock last
(docs/architecture.md, "Lock order"); a write that takes them the other way round
deadlocks against one that follows the rule, and PostgreSQL answers one of them with an
error (a 500). These tests run each pair for enough rounds to hit that window: before the
rule was enforced, 4 to 28 rounds in 40 of each pair deadlocked.

The loser of a race must get a clean 404 (the object is gone) or 409, never a 5xx.
"""

import functools
import threading

import pytest
from django.core.management import call_command
from django.db import connection

from accounts.tests.factories import AdminUserFactory, SiteMembershipFactory
from devices_app.models import Device, DeviceCredential
from devices_app.tests.factories import DeviceCredentialFactory
from homepot.tests.api_helpers import token_client
from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 20


@pytest.fixture
def clients():
    """Two API clients of one admin, each with a real bearer token; a 500 comes back as
    a response instead of an exception raised in the thread."""
    admin = AdminUserFactory()
    pair = (token_client(admin), token_client(admin))
    for client in pair:
        client.raise_request_exception = False
    return pair


def race(*calls):
    """Run the calls at the same moment, each in a thread with its own connection, and
    return their responses in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(index, call):
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except Exception as exc:  # surfaced by the caller's assertions
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def statuses(results) -> list:
    return [getattr(r, "status_code", r) for r in results]


def run_rounds(make, first, second, *, first_ok, second_ok):
    """`make()` creates the object of a round; `first(client, obj)` and `second(...)` send
    the racing requests. Returns the responses of every round (for end-state checks)."""
    seen = []
    for _ in range(ROUNDS):
        obj = make()
        results = race(functools.partial(first, obj), functools.partial(second, obj))
        got = statuses(results)
        assert got[0] in first_ok and got[1] in second_ok, (got, [getattr(r, "content", r) for r in results])
        seen.append((obj, got))
    return seen


def assert_chain_intact():
    call_command("verify_audit")


# --- Devices ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body", "ok"),
    [
        ("patch", "", {"name": "Renamed in the race"}, {200}),
        ("post", "/credential", None, {201}),
        ("delete", "/credential", None, {204}),
    ],
    ids=["patch", "credential-issue", "credential-revoke"],
)
def test_device_delete_races_another_write_without_a_deadlock(clients, method, suffix, body, ok):
    deleter, writer = clients
    site = SiteFactory()

    def delete(device):
        return deleter.delete(f"/api/v1/devices/{device.device_id}")

    def write(device):
        return getattr(writer, method)(f"/api/v1/devices/{device.device_id}{suffix}", body, format="json")

    rounds = run_rounds(
        lambda: DeviceCredentialFactory(device__site=site).device,
        delete,
        write,
        first_ok={204},
        second_ok=ok | {404},
    )

    assert not Device.objects.filter(site=site).exists()
    assert not DeviceCredential.objects.filter(device__site=site).exists()
    for device, (_, other) in rounds:
        trail = AuditLog.objects.filter(device_ref=device.device_id).order_by("id")
        events = list(trail.values_list("event_type", flat=True))
        # The delete is recorded last; the other write appears before it exactly when it won.
        assert events[-1] == "device.deleted"
        assert (len(events) == 2) == (other in ok), (other, events)
    assert_chain_intact()


# --- Sites, jobs, memberships ----------------------------------------------------------


def test_site_delete_races_a_job_cancel_without_a_deadlock(clients):
    deleter, writer = clients

    def make():
        return JobFactory(site=SiteFactory())

    run_rounds(
        make,
        lambda job: deleter.delete(f"/api/v1/sites/{job.site.site_id}"),
        lambda job: writer.post(f"/api/v1/jobs/{job.pk}/cancel"),
        first_ok={204},
        second_ok={200, 404},
    )
    assert not Site.objects.filter(jobs__isnull=False).exists()
    assert not Job.objects.exists()
    assert_chain_intact()


def test_membership_revoke_races_a_role_change_without_a_deadlock(clients):
    deleter, writer = clients
    rounds = run_rounds(
        SiteMembershipFactory,
        lambda m: deleter.delete(f"/api/v1/memberships/{m.pk}"),
        lambda m: writer.patch(f"/api/v1/memberships/{m.pk}", {"role": "viewer"}, format="json"),
        first_ok={204},
        second_ok={200, 404},
    )
    assert len(rounds) == ROUNDS
    assert_chain_intact()
