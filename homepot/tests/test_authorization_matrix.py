"""The authorization matrix: every API endpoint and every admin page, asked by every kind of
caller, answers as the access policy says.

The callers: anonymous; a device with its own credential; a viewer of site A (reads A,
changes nothing); a manager of site A (runs A's devices and jobs, reads the rest of A); an
admin (everything). Site B belongs to someone else: for A's members, B's objects answer
exactly as objects that do not exist (404 in the API, "doesn't exist" in the admin), so
their existence does not leak, and nothing of B appears in any list, filter, export or
autocomplete they get.

The routes come from the URL resolver and the admin's registry, so a new endpoint, admin
page or admin model without an entry here fails `test_every_*_has_a_place_in_the_matrix`.
"""

import csv
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.db.models import Field, Q
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, SiteMembership, User
from accounts.tests.factories import SiteMembershipFactory
from devices_app.models import Device, DeviceCredential
from homepot.csv_export import XLSX_CONTENT_TYPE
from homepot.tests.matrix_support import (
    B_MARKER,
    PASSWORD,
    World,
    build_world,
    concrete,
    rolled_back,
    routes,
    submitted_form,
    view_of,
)
from jobs_app.models import Delivery, Job, SavedSegment
from monitoring_app.models import Alert, AuditLog, HealthCheck, Notification
from sites_app.models import Site

pytestmark = pytest.mark.django_db

A, B, MISSING = "A", "B", "missing"
MEMBERS = ("viewer", "manager")  # the members of site A; "admin" is head office
MISSING_PK = 999_999_999


@pytest.fixture
def world(settings) -> World:
    # Login and signup limits are tested in accounts; here they would only count requests.
    for name in (
        "LOGIN_RATE_PER_IP",
        "LOGIN_RATE_PER_ACCOUNT",
        "SIGNUP_RATE_PER_IP",
        "SIGNUP_RATE_PER_ACCOUNT",
    ):
        setattr(settings, f"HOMEPOT_ACCOUNTS_{name}", "")
    return build_world()


# =============================================================================================
# API
# =============================================================================================


def members(viewer, manager, admin, *, anon=401, device=401) -> dict[str, Any]:
    """Expected statuses per caller. A "200/404" pair is (on A's object, on B's object); a
    member's answer on a missing object must equal the one on B's."""
    return {"anon": anon, "device": device, "viewer": viewer, "manager": manager, "admin": admin}


def everyone(status: int) -> dict[str, Any]:
    return members(status, status, status, anon=status, device=status)


@dataclass(frozen=True)
class Api:
    route: str  # as the resolver spells it, normalized (homepot.tests.matrix_support)
    expect: dict[str, dict[str, Any]]  # method -> caller -> status or "on A/on B"
    target: Callable[[World, str, str], Any] | None = None  # (world, A|B|missing, caller) -> URL value
    body: Callable[[World, str, str, str], dict] | None = None  # (world, method, target, caller)
    body_targets: bool = False  # the body, not the URL, names site A or B
    device_targets: bool = False  # an agent endpoint: A is the calling device's, B another's
    rows: Callable[[World, str, str], list[str]] | None = None  # (world, caller, body) -> problems
    aliases: tuple[str, ...] = ()  # other routes serving the same view
    format: str = "json"  # how `body` is sent (an upload is "multipart")


def at_root_and_v1(route: str) -> tuple[str, ...]:
    return (f"{route}/", f"api/v1/{route}", f"api/v1/{route}/")


def slashed(route: str) -> tuple[str, ...]:
    return (f"{route}/",)


# --- Targets and bodies --------------------------------------------------------------------


def _pick(target, a, b, missing):
    return {A: a, B: b, MISSING: missing}[target]


def site_of(w, target, actor):
    return _pick(target, w.site_a.site_id, w.site_b.site_id, "site-missing")


def device_of(w, target, actor):
    return _pick(target, w.device_a.device_id, w.device_b.device_id, "till-missing")


def audit_of(w, target, actor):
    return _pick(target, w.audit_a.pk, w.audit_b.pk, MISSING_PK)


def user_of(w, target, actor):
    return _pick(target, w.viewer.pk, w.manager_b.pk, MISSING_PK)


def job_of(w, target, actor):
    return _pick(target, w.job_a.pk, w.job_b.pk, MISSING_PK)


def segment_of(w, target, actor):
    return _pick(target, w.segment_a.pk, w.segment_b.pk, MISSING_PK)


def alert_of(w, target, actor):
    return _pick(target, w.alert_a.pk, w.alert_b.pk, MISSING_PK)


def delivery_of(w, target, actor):
    # The device calling is A's; B's delivery is another device's work.
    return _pick(target, w.delivery_a.pk, w.delivery_b.pk, MISSING_PK)


def job_delivery_of(w, target, actor):
    # (job, delivery): each store's job with its own delivery to that store's device.
    return _pick(
        target, (w.job_a.pk, w.delivery_a.pk), (w.job_b.pk, w.delivery_b.pk), (MISSING_PK, MISSING_PK)
    )


def membership_of(w, target, actor):
    return _pick(target, w.membership_a.pk, w.membership_b.pk, MISSING_PK)


def token_of(w, target, actor):
    # "A" is the caller's own token; "B" is someone else's (site B's manager).
    own = w.tokens.get(actor, w.tokens["viewer"])
    return _pick(target, own.pk, w.tokens["manager_b"].pk, MISSING_PK)


def site_body(w, method, target, actor):
    if method == "POST":
        return {"site_id": "site-new", "name": "New Store", "timezone": "UTC"}
    if method == "PUT":
        return {"site_id": site_of(w, target, actor), "name": "Renamed Store", "timezone": "UTC"}
    return {"name": "Renamed Store"}


def device_body(w, method, target, actor):
    if method == "POST":
        site = site_of(w, target, actor)
        return {"device_id": "till-new", "name": "New Till", "device_type": "pos_terminal", "site_id": site}
    if method == "PUT":
        site = {A: w.site_a, B: w.site_b}.get(target, w.site_a).site_id
        device_id = device_of(w, target, actor)
        return {
            "device_id": device_id,
            "name": "Renamed Till",
            "device_type": "pos_terminal",
            "site_id": site,
        }
    return {"status": "maintenance"}


def device_import_body(w, method, target, actor):
    """A one-row CSV upload naming site A, B or a missing site (a dry run: nothing written)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    text = f"device_id,name,site_id\ntill-imported,Imported Till,{site_of(w, target, actor)}\n"
    return {"file": SimpleUploadedFile("devices.csv", text.encode(), content_type="text/csv")}


def site_import_body(w, method, target, actor):
    """A one-row CSV upload of a new site (a dry run: nothing written)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    text = "site_id,name\nsite-imported,Imported Store\n"
    return {"file": SimpleUploadedFile("sites.csv", text.encode(), content_type="text/csv")}


def job_body(w, method, target, actor):
    if method == "POST":
        return {"site_id": site_of(w, target, actor), "action": "update_config", "payload": {"volume": 3}}
    return {"priority": "high"}


def segment_body(w, method, target, actor):
    if method == "POST":
        return {"name": "Tills", "site_id": site_of(w, target, actor), "segment": {"status": ["online"]}}
    return {"name": "Renamed tills"}


def note_body(w, method, target, actor):
    return {"text": "Called the store; the till is being replaced."}


def heartbeat_body(w, method, target, actor):
    return {}


def maintenance_body(w, method, target, actor):
    return {"maintenance_windows": [{"weekday": 1, "starts": "02:00", "ends": "05:00"}], "blackouts": []}


def health_body(w, method, target, actor):
    return {"status": "healthy", "response_time_ms": 80}


def health_batch_body(w, method, target, actor):
    # A is the calling device itself; B a device of another site (a terminal may report
    # only for itself, a gateway for its own site).
    reports = [{"status": "healthy"}, {"status": "degraded", "device_id": device_of(w, target, actor)}]
    return {"reports": reports}


def result_body(w, method, target, actor):
    return {"status": "completed", "details": {"applied": True}}


def defer_body(w, method, target, actor):
    return {"delay_seconds": 60, "reason": "sale in progress"}


def user_body(w, method, target, actor):
    if method == "POST":
        return {"username": "new-operator", "email": "new-operator@example.com"}
    if method == "PUT":
        user = {A: w.viewer, B: w.manager_b}.get(target, w.viewer)
        return {"username": user.username, "email": user.email, "first_name": "Renamed"}
    return {"first_name": "Renamed"}


def membership_body(w, method, target, actor):
    if method == "POST":
        return {"user": w.outsider.pk, "site": site_of(w, target, actor), "role": "viewer"}
    return {"role": "manager"}


def signup_body(w, method, target, actor):
    return {"username": "walk-in", "email": "walk-in@example.com", "password": "harbour-lights-47-tide"}


def login_body(w, method, target, actor):
    user = w.user(actor) or w.viewer
    return {"username": user.username, "password": PASSWORD}


def token_body(w, method, target, actor):
    return {"name": "integration"}


# --- List checks ---------------------------------------------------------------------------


def scoped_listing(actor, listed: set, a, b, row_sites: set, site_a: str) -> list[str]:
    """A member lists A's row, not B's, and only rows of site A; an admin lists both."""
    problems = []
    if a not in listed:
        problems.append(f"A's row {a!r} is missing")
    if actor == "admin":
        if b not in listed:
            problems.append(f"B's row {b!r} is missing for the admin")
    else:
        if b in listed:
            problems.append(f"B's row {b!r} is listed")
        if row_sites - {site_a}:
            problems.append(f"rows of other sites are listed: {sorted(row_sites - {site_a})}")
    return problems


def site_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed = {row["site_id"] for row in rows}
    return scoped_listing(actor, listed, w.site_a.site_id, w.site_b.site_id, listed, w.site_a.site_id)


def device_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["device_id"] for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.device_a.device_id, w.device_b.device_id, sites, w.site_a.site_id)


def audit_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.audit_a.pk, w.audit_b.pk, sites, w.site_a.site_id)


def audit_csv_rows(w, actor, text):
    rows = list(csv.DictReader(io.StringIO(text)))
    listed, sites = {int(row["id"]) for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.audit_a.pk, w.audit_b.pk, sites, w.site_a.site_id)


def site_csv_rows(w, actor, text):
    listed = {row["site_id"] for row in csv.DictReader(io.StringIO(text))}
    return scoped_listing(actor, listed, w.site_a.site_id, w.site_b.site_id, listed, w.site_a.site_id)


def device_csv_rows(w, actor, text):
    rows = list(csv.DictReader(io.StringIO(text)))
    listed, sites = {row["device_id"] for row in rows}, {row["site_id"] for row in rows}
    return scoped_listing(actor, listed, w.device_a.device_id, w.device_b.device_id, sites, w.site_a.site_id)


def job_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.job_a.pk, w.job_b.pk, sites, w.site_a.site_id)


def device_job_rows(w, actor, text):
    """A device's jobs are exactly the one job sent to it: A's device lists A's job (B's
    device, which only the admin reaches, lists B's), never both."""
    listed = {row["id"] for row in json.loads(text)["results"]}
    allowed = [{w.job_a.pk}, {w.job_b.pk}] if actor == "admin" else [{w.job_a.pk}]
    return [] if listed in allowed else [f"the device's jobs are {sorted(listed)}"]


def segment_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows} - {None}
    return scoped_listing(actor, listed, w.segment_a.pk, w.segment_b.pk, sites, w.site_a.site_id)


def alert_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.alert_a.pk, w.alert_b.pk, sites, w.site_a.site_id)


def health_check_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows}
    return scoped_listing(actor, listed, w.check_a.pk, w.check_b.pk, sites, w.site_a.site_id)


def delivery_rows(w, actor, text):
    rows = json.loads(text)["results"]
    listed, sites = {row["id"] for row in rows}, {row["site"] for row in rows}
    problems = (
        [] if w.delivery_a.pk in listed or w.delivery_b.pk in listed else ["the job's delivery is missing"]
    )
    if actor != "admin" and sites - {w.site_a.site_id}:
        problems.append(f"deliveries at other sites are listed: {sorted(sites)}")
    return problems


def command_rows(w, actor, text):
    listed = {row["delivery_id"] for row in json.loads(text)["commands"]}
    return [] if listed == {w.delivery_a.pk} else [f"the device is given {sorted(listed)}"]


def user_rows(w, actor, text):
    listed = {row["username"] for row in json.loads(text)["results"]}
    return [] if {w.viewer.username, w.manager_b.username} <= listed else [f"users missing: {listed}"]


def membership_rows(w, actor, text):
    listed = {row["id"] for row in json.loads(text)["results"]}
    wanted = {w.membership_a.pk, w.membership_b.pk}
    return [] if wanted <= listed else [f"memberships missing: {wanted - listed}"]


def token_rows(w, actor, text):
    """Everyone, admins too, lists their own tokens (admins ask for others' with ?user=)."""
    rows = json.loads(text)["results"]
    owners = {row["username"] for row in rows}
    problems = [] if w.tokens[actor].pk in {row["id"] for row in rows} else ["the caller's token is missing"]
    if owners != {w.user(actor).username}:
        problems.append(f"tokens of others are listed: {sorted(owners)}")
    return problems


# --- The policy ----------------------------------------------------------------------------

READ_ONLY_TO_ALL = members("403/403", "403/403", "405/405")  # the audit trail: no edits, ever
ADMINS_ONLY = members("403/403", "403/403", "200/200")

API = [
    # Sites: members read their own; only admins create, change or delete sites.
    Api(
        "sites",
        {"GET": members(200, 200, 200), "POST": members(403, 403, 201)},
        body=site_body,
        rows=site_rows,
        aliases=at_root_and_v1("sites"),
    ),
    Api(
        "sites/export",
        {"GET": members(200, 200, 200)},
        rows=site_csv_rows,
        aliases=at_root_and_v1("sites/export"),
    ),
    Api(
        "sites/export/xlsx",
        {"GET": members(200, 200, 200)},
        rows=site_csv_rows,
        aliases=at_root_and_v1("sites/export/xlsx"),
    ),
    # Importing sites is creating and changing them: admins only.
    Api(
        "sites/import",
        {"POST": members(403, 403, 200)},
        body=site_import_body,
        format="multipart",
        aliases=at_root_and_v1("sites/import"),
    ),
    Api(
        "sites/<site_id>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "PUT": ADMINS_ONLY,
            "PATCH": ADMINS_ONLY,
            "DELETE": members("403/403", "403/403", "409/409"),  # both still have a device
        },
        target=site_of,
        body=site_body,
        aliases=at_root_and_v1("sites/<site_id>"),
    ),
    # Devices: managers run their site's devices and may not create one on site B.
    Api(
        "devices",
        {"GET": members(200, 200, 200), "POST": members("403/403", "201/400", "201/201")},
        body=device_body,
        body_targets=True,
        rows=device_rows,
        aliases=at_root_and_v1("devices"),
    ),
    Api(
        "devices/export",
        {"GET": members(200, 200, 200)},
        rows=device_csv_rows,
        aliases=at_root_and_v1("devices/export"),
    ),
    Api(
        "devices/export/xlsx",
        {"GET": members(200, 200, 200)},
        rows=device_csv_rows,
        aliases=at_root_and_v1("devices/export/xlsx"),
    ),
    # Import: a manager names only their own site (B's or a missing one: the same row error).
    Api(
        "devices/import",
        {"POST": members("403/403", "200/400", "200/200")},
        body=device_import_body,
        body_targets=True,
        format="multipart",
        aliases=at_root_and_v1("devices/import"),
    ),
    Api(
        "devices/<device_id>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "PUT": members("403/403", "200/404", "200/200"),
            "PATCH": members("403/403", "200/404", "200/200"),
            "DELETE": members("403/403", "204/404", "204/204"),
        },
        target=device_of,
        body=device_body,
        aliases=at_root_and_v1("devices/<device_id>"),
    ),
    Api(
        "devices/<device_id>/credential",
        {
            "POST": members("403/403", "201/404", "201/201"),
            "DELETE": members("403/403", "204/404", "204/204"),
        },
        target=device_of,
        aliases=at_root_and_v1("devices/<device_id>/credential"),
    ),
    # Jobs: managers create and control their site's jobs; viewers read them.
    Api(
        "jobs",
        {"GET": members(200, 200, 200), "POST": members("403/403", "201/400", "201/201")},
        body=job_body,
        body_targets=True,
        rows=job_rows,
        aliases=at_root_and_v1("jobs"),
    ),
    Api(
        "jobs/preview",
        {"POST": members("403/403", "200/400", "200/200")},
        body=job_body,
        body_targets=True,
        aliases=at_root_and_v1("jobs/preview"),
    ),
    Api(
        "jobs/<pk>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "PATCH": members("403/403", "200/404", "200/200"),
            "PUT": members("403/403", "405/405", "405/405"),  # jobs change only in part
            "DELETE": members("403/403", "403/403", "405/405"),  # jobs are history: cancel them
        },
        target=job_of,
        body=job_body,
        aliases=at_root_and_v1("jobs/<pk>"),
    ),
    Api(
        "jobs/<pk>/deliveries",
        {"GET": members("200/404", "200/404", "200/200")},
        target=job_of,
        rows=delivery_rows,
        aliases=at_root_and_v1("jobs/<pk>/deliveries"),
    ),
    *(
        Api(
            f"jobs/<pk>/{control}",
            {"POST": members("403/403", f"{ok}/404", f"{ok}/{ok}")},
            target=job_of,
            aliases=at_root_and_v1(f"jobs/<pk>/{control}"),
        )
        # A queued job: pausing, resuming (nothing to do) and cancelling work; there is
        # nothing to retry yet, no wave awaiting approval, nor anything to roll back while it
        # runs (409, past the permission
        # checks); a clone is a new job.
        for control, ok in (
            ("pause", 200),
            ("resume", 200),
            ("cancel", 200),
            ("retry", 409),
            ("clone", 201),
            ("approve-wave", 409),
            ("rollback", 409),
        )
    ),
    # Cancelling one delivery (sent, not yet acknowledged): a job control like the others.
    Api(
        "jobs/<pk>/deliveries/<delivery_id>/cancel",
        {"POST": members("403/403", "200/404", "200/200")},
        target=job_delivery_of,
        aliases=at_root_and_v1("jobs/<pk>/deliveries/<delivery_id>/cancel"),
    ),
    Api(
        "devices/<device_id>/jobs",  # an alias of jobs?device=<device_id>
        {"GET": members("200/404", "200/404", "200/200")},
        target=device_of,
        rows=device_job_rows,
        aliases=at_root_and_v1("devices/<device_id>/jobs"),
    ),
    # Saved segments: a job-targeting tool of those who create jobs (not viewers).
    Api(
        "segments",
        {"GET": members(403, 200, 200), "POST": members("403/403", "201/400", "201/201")},
        body=segment_body,
        body_targets=True,
        rows=segment_rows,
        aliases=at_root_and_v1("segments"),
    ),
    Api(
        "segments/<pk>",
        {
            "GET": members("403/403", "200/404", "200/200"),
            "PATCH": members("403/403", "200/404", "200/200"),
            "PUT": members("403/403", "405/405", "405/405"),
            "DELETE": members("403/403", "204/404", "204/204"),
        },
        target=segment_of,
        body=segment_body,
        aliases=at_root_and_v1("segments/<pk>"),
    ),
    # Health and alerts: members read their sites' health; managers handle the alerts.
    Api(
        "sites/<site_id>/health",
        {"GET": members("200/404", "200/404", "200/200")},
        target=site_of,
        aliases=at_root_and_v1("sites/<site_id>/health"),
    ),
    # Trading hours: members read them; a site's managers (and admins) set them.
    Api(
        "sites/<site_id>/maintenance",
        {"GET": members("200/404", "200/404", "200/200"), "PUT": members("403/404", "200/404", "200/200")},
        target=site_of,
        body=maintenance_body,
        aliases=at_root_and_v1("sites/<site_id>/maintenance"),
    ),
    Api("api/v1/fleet/summary/?", {"GET": members(200, 200, 200)}),
    Api(
        "api/v1/fleet/devices/<device_id>/timeline/?",
        {"GET": members("200/404", "200/404", "200/200")},
        target=device_of,
    ),
    Api(
        "api/v1/fleet/sites/<site_id>/timeline/?",
        {"GET": members("200/404", "200/404", "200/200")},
        target=site_of,
    ),
    # The health history: read within scope; reports arrive only from the devices.
    Api(
        "api/v1/health-checks",
        {"GET": members(200, 200, 200), "POST": members(403, 403, 405)},
        rows=health_check_rows,
        aliases=slashed("api/v1/health-checks"),
    ),
    Api(
        "api/v1/alerts",
        {"GET": members(200, 200, 200), "POST": members(403, 405, 405)},
        rows=alert_rows,
        aliases=slashed("api/v1/alerts"),
    ),
    Api(
        "api/v1/alerts/<pk>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "PATCH": members("403/403", "405/405", "405/405"),
            "PUT": members("403/403", "405/405", "405/405"),
            "DELETE": members("403/403", "405/405", "405/405"),
        },
        target=alert_of,
        aliases=slashed("api/v1/alerts/<pk>"),
    ),
    *(
        Api(
            f"api/v1/alerts/<pk>/{step}",
            {"POST": members("403/403", f"{ok}/404", f"{ok}/{ok}")},
            target=alert_of,
            body=note_body,
            aliases=slashed(f"api/v1/alerts/<pk>/{step}"),
        )
        for step, ok in (("acknowledge", 200), ("resolve", 200), ("notes", 201))
    ),
    # The audit trail: read within scope, never written through the API.
    Api(
        "api/v1/audit-logs",
        {"GET": members(200, 200, 200), "POST": members(403, 403, 405)},
        rows=audit_rows,
        aliases=slashed("api/v1/audit-logs"),
    ),
    Api(
        "api/v1/audit-logs/export",
        {"GET": members(200, 200, 200)},
        rows=audit_csv_rows,
        aliases=slashed("api/v1/audit-logs/export"),
    ),
    Api(
        "api/v1/audit-logs/<pk>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "PUT": READ_ONLY_TO_ALL,
            "PATCH": READ_ONLY_TO_ALL,
            "DELETE": READ_ONLY_TO_ALL,
        },
        target=audit_of,
        aliases=slashed("api/v1/audit-logs/<pk>"),
    ),
    # People and their roles: admins only; users are deactivated, never deleted.
    Api(
        "api/v1/users",
        {"GET": members(403, 403, 200), "POST": members(403, 403, 201)},
        body=user_body,
        rows=user_rows,
        aliases=slashed("api/v1/users"),
    ),
    Api(
        "api/v1/users/<pk>",
        {
            "GET": ADMINS_ONLY,
            "PUT": ADMINS_ONLY,
            "PATCH": ADMINS_ONLY,
            "DELETE": members("403/403", "403/403", "405/405"),
        },
        target=user_of,
        body=user_body,
        aliases=slashed("api/v1/users/<pk>"),
    ),
    Api(
        "api/v1/users/<pk>/activate",
        {"POST": ADMINS_ONLY},
        target=user_of,
        aliases=slashed("api/v1/users/<pk>/activate"),
    ),
    Api(
        "api/v1/users/<pk>/deactivate",
        {"POST": ADMINS_ONLY},
        target=user_of,
        aliases=slashed("api/v1/users/<pk>/deactivate"),
    ),
    Api(
        "api/v1/memberships",
        {"GET": members(403, 403, 200), "POST": members("403/403", "403/403", "201/201")},
        body=membership_body,
        body_targets=True,
        rows=membership_rows,
        aliases=slashed("api/v1/memberships"),
    ),
    Api(
        "api/v1/memberships/<pk>",
        {
            "GET": ADMINS_ONLY,
            "PUT": ADMINS_ONLY,
            "PATCH": ADMINS_ONLY,
            "DELETE": members("403/403", "403/403", "204/204"),
        },
        target=membership_of,
        body=membership_body,
        aliases=slashed("api/v1/memberships/<pk>"),
    ),
    # Accounts: open doors, and each caller's own session and tokens.
    Api(
        "api/v1/auth/signup", {"POST": everyone(201)}, body=signup_body, aliases=slashed("api/v1/auth/signup")
    ),
    Api("api/v1/auth/login", {"POST": everyone(200)}, body=login_body, aliases=slashed("api/v1/auth/login")),
    Api("api/v1/auth/logout", {"POST": members(204, 204, 204)}, aliases=slashed("api/v1/auth/logout")),
    Api("api/v1/auth/me", {"GET": members(200, 200, 200)}, aliases=slashed("api/v1/auth/me")),
    Api(
        "api/v1/auth/tokens",
        {"GET": members(200, 200, 200), "POST": members(201, 201, 201)},
        body=token_body,
        rows=token_rows,
        aliases=slashed("api/v1/auth/tokens"),
    ),
    Api(
        "api/v1/auth/tokens/<pk>",
        {
            "GET": members("200/404", "200/404", "200/200"),
            "DELETE": members("204/404", "204/404", "204/204"),
        },
        target=token_of,
        aliases=slashed("api/v1/auth/tokens/<pk>"),
    ),
    # Devices calling in as themselves: nobody else, not even an admin's token.
    Api("api/v1/agent/me/?", {"GET": members(401, 401, 401, device=200)}),
    Api("api/v1/agent/commands/?", {"GET": members(401, 401, 401, device=200)}, rows=command_rows),
    Api("api/v1/agent/heartbeat/?", {"POST": members(401, 401, 401, device=200)}, body=heartbeat_body),
    Api("api/v1/agent/health/?", {"POST": members(401, 401, 401, device=201)}, body=health_body),
    Api(
        "api/v1/agent/health/batch/?",
        {"POST": members(401, 401, 401, device="201/400")},
        body=health_batch_body,
        body_targets=True,
        device_targets=True,
    ),
    Api(
        "api/v1/agent/deliveries/<delivery_id>/ack/?",
        {"POST": members("401/401", "401/401", "401/401", device="200/404")},
        target=delivery_of,
        device_targets=True,
    ),
    Api(
        "api/v1/agent/deliveries/<delivery_id>/result/?",
        {"POST": members("401/401", "401/401", "401/401", device="200/404")},
        target=delivery_of,
        body=result_body,
        device_targets=True,
    ),
    Api(
        "api/v1/agent/deliveries/<delivery_id>/defer/?",
        {"POST": members("401/401", "401/401", "401/401", device="200/404")},
        target=delivery_of,
        body=defer_body,
        device_targets=True,
    ),
    # Public by design: the liveness probe, the API's description, the way to the console.
    Api("healthz", {"GET": everyone(200)}),
    # Readiness: names only, like the liveness probe (homepot.views.readyz).
    Api("readyz", {"GET": everyone(200)}),
    # Off without HOMEPOT_METRICS_TOKEN (as here); with it, only that bearer token reads it, no
    # session nor device credential (homepot/tests/test_metrics.py).
    Api("metrics", {"GET": everyone(404)}),
    Api("api/schema/?", {"GET": everyone(200)}),
    Api("docs/?", {"GET": everyone(200)}),
    Api("redoc/?", {"GET": everyone(200)}),
    Api("", {"GET": everyone(302)}),
]
API_BY_ROUTE = {endpoint.route: endpoint for endpoint in API}


# --- Running it ----------------------------------------------------------------------------


def api_client(world: World, actor: str) -> APIClient:
    client = APIClient()
    if actor in world.secrets:
        client.credentials(HTTP_AUTHORIZATION=world.secrets[actor])
    return client


def wanted(spec, target) -> int:
    if isinstance(spec, int):
        return spec
    on_a, on_b = (int(part) for part in spec.split("/"))
    return on_a if target == A else on_b


def targets_for(endpoint: Api, method: str, actor: str) -> tuple:
    """A (A's object), B (B's) and a missing one, for the callers to whom it matters."""
    if endpoint.target is None and not (endpoint.body_targets and method == "POST"):
        return (None,)
    if actor in MEMBERS or (actor == "device" and endpoint.device_targets):
        return (A, B, MISSING)
    return (A, B) if actor in ("anon", "admin") else (A,)


def xlsx_as_csv(data: bytes) -> str:
    """An exported workbook's first sheet as CSV text, so the CSV exports' row checks apply."""
    from openpyxl import load_workbook

    out = io.StringIO()
    writer = csv.writer(out)
    for row in load_workbook(io.BytesIO(data), read_only=True).worksheets[0].iter_rows(values_only=True):
        writer.writerow(["" if value is None else value for value in row])
    return out.getvalue()


@dataclass
class Answer:
    status: int
    text: str
    shape: tuple  # what an error reveals: status, code and the fields named

    @classmethod
    def of(cls, response) -> "Answer":
        if response.get("Content-Type") == XLSX_CONTENT_TYPE:
            text = xlsx_as_csv(b"".join(response.streaming_content))
        elif response.streaming:
            text = b"".join(response.streaming_content).decode()
        else:
            text = response.content.decode(errors="replace")
        shape: tuple = (response.status_code,)
        if response.get("Content-Type", "").startswith("application/json") and text:
            error = json.loads(text).get("error") if text.startswith("{") else None
            if error:
                shape = (response.status_code, error.get("code"), sorted(error.get("fields", {})))
        return cls(response.status_code, text, shape)


def api_call(world, endpoint: Api, route: str, method: str, actor: str, target) -> tuple[str, Answer]:
    """One request, in a savepoint rolled back after it: (what was asked, the answer)."""
    value = endpoint.target(world, target, actor) if endpoint.target else None
    url = concrete(route, value)
    client = api_client(world, actor)
    with rolled_back():
        if method in ("GET", "DELETE", "OPTIONS"):
            response = getattr(client, method.lower())(url)
        else:
            body = endpoint.body(world, method, target, actor) if endpoint.body else None
            response = getattr(client, method.lower())(url, body, format=endpoint.format)
        answer = Answer.of(response)
    return f"{method} {url} as {actor}", answer


def check_endpoint(world, endpoint: Api, route: str, methods=None, actors=None, smoke=False) -> list[str]:
    """Ask `route` as every caller (or `actors`) with every method (or `methods`); return what
    differs from the policy. `smoke`: one request per caller (anonymous on A's object, the
    others on B's), enough to show a route is wired to a view with its guards."""
    problems = []
    for method, by_actor in endpoint.expect.items():
        if methods and method not in methods:
            continue
        for actor, spec in by_actor.items():
            if actors and actor not in actors:
                continue
            answers = {}
            for target in targets_for(endpoint, method, actor):
                if smoke and target not in ((A, None) if actor == "anon" else (B, None)):
                    continue
                what, answer = api_call(world, endpoint, route, method, actor, target)
                answers[target] = answer
                if target == MISSING:
                    continue  # compared with B's answer below
                want = wanted(spec, target)
                if answer.status != want:
                    problems.append(f"{what}: {answer.status}, expected {want}: {answer.text[:200]}")
                    continue
                # A request naming B's object may hear its name back; nothing else may.
                if actor != "admin" and target != B and B_MARKER in answer.text.lower():
                    problems.append(f"{what}: the answer mentions site B's side: {answer.text[:300]}")
                if endpoint.rows and method == "GET" and answer.status == 200:
                    problems += [f"{what}: {problem}" for problem in endpoint.rows(world, actor, answer.text)]
            if (
                MISSING in answers
                and actor == "manager"
                and endpoint.target
                and method == next(iter(endpoint.expect))
            ):
                # What OPTIONS describes (which writes are open) must not depend on existence.
                options = {
                    t: api_call(world, endpoint, route, "OPTIONS", actor, t)[1].text for t in (B, MISSING)
                }
                if options[B] != options[MISSING]:
                    problems.append(f"OPTIONS {route} as {actor}: B's object and a missing one differ")
            if MISSING in answers and answers[MISSING].shape != answers[B].shape:
                problems.append(
                    f"{method} {route} as {actor}: B's object answers {answers[B].shape}, a missing one "
                    f"{answers[MISSING].shape}: the answer reveals that B's object exists"
                )
    return problems


def test_every_api_route_has_a_place_in_the_matrix():
    served = {route for route, _ in routes() if not route.startswith("admin/")}
    covered = {endpoint.route for endpoint in API} | {alias for endpoint in API for alias in endpoint.aliases}

    assert served - covered == set(), "routes without an entry in the authorization matrix"
    assert covered - served == set(), "matrix entries for routes that are no longer served"


def test_aliases_serve_the_same_view_as_their_endpoint():
    served = dict(routes())
    for endpoint in API:
        for alias in endpoint.aliases:
            assert view_of(served[alias]) == view_of(served[endpoint.route]), alias


@pytest.mark.parametrize("endpoint", API, ids=lambda endpoint: endpoint.route or "/")
def test_api_endpoint_answers_every_caller_as_the_policy_says(world, endpoint):
    problems = check_endpoint(world, endpoint, endpoint.route)
    # The other spellings of the route run the same view (test above); a few requests each
    # show they are wired to it with the same guards.
    first_method = next(iter(endpoint.expect))
    for alias in endpoint.aliases:
        problems += check_endpoint(
            world, endpoint, alias, methods={first_method}, actors={"anon", "manager"}, smoke=True
        )

    assert problems == [], "\n".join(problems)


# =============================================================================================
# Admin
# =============================================================================================


def perms(viewer: str, manager: str, admin: str) -> dict[str, str]:
    """Per caller, the letters of what they may do with the model in the console: view,
    add, change, delete (rows: their sites' for members, all for the admin)."""
    return {"viewer": viewer, "manager": manager, "admin": admin}


@dataclass(frozen=True)
class AdminModel:
    model: type
    perms: dict[str, str]
    objects: Callable[[World, str], tuple]  # (world, caller) -> (A's object, B's object)
    site_path: str | None = None  # site-scoped rows: the path from the model to its site
    own_rows: bool = False  # members see their own rows (API tokens) but no one else's
    deleted_answer: int = 302  # a permitted delete: to the changelist (200: protected, page says why)
    pages: tuple[tuple[str, str], ...] = ()  # the admin's own views: (path under the model, letter needed)
    # The admin's own form pages (no rows of anyone's shown on a GET): (path, letter needed).
    form_pages: tuple[tuple[str, str], ...] = ()
    # The admin's own POST views of one row (paths under `<object_id>/`), each with its own test.
    object_pages: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    def url(self, view: str, *args) -> str:
        opts = self.model._meta
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)

    def members_see(self, which: str) -> bool:
        """Whether a member's admin queryset holds A's (or B's, or a missing) object."""
        return which == A and (self.site_path is not None or self.own_rows)


ADMIN = [
    AdminModel(
        Site,
        perms("v", "v", "vacd"),
        lambda w, a: (w.site_a, w.site_b),
        site_path="pk",
        deleted_answer=200,
        # The changelist as CSV and as .xlsx, with its filters (scoped).
        pages=(("export/", "v"), ("export/xlsx/", "v")),
        # The CSV import, administrators only: sites_app/tests/test_csv_import_admin.py.
        form_pages=(("import/", "a"),),
        # The site page's confirmed buttons (sites_app/tests/test_admin.py: viewer 403,
        # another site's 404, a manager's job created and audited).
        object_pages=("actions/<action>/",),
    ),
    AdminModel(
        Device,
        perms("v", "vacd", "vacd"),
        lambda w, a: (w.device_a, w.device_b),
        site_path="site",
        # The changelist as CSV and as .xlsx, with its filters (scoped).
        pages=(("export/", "v"), ("export/xlsx/", "v")),
        # The CSV import (upload, preview, confirm): devices_app/tests/test_csv_import_admin.py.
        form_pages=(("import/", "a"),),
        # The device page's confirmed buttons (devices_app/tests/test_admin.py, same checks).
        object_pages=("actions/<action>/",),
    ),
    AdminModel(
        Job,
        perms("v", "vac", "vac"),
        lambda w, a: (w.job_a, w.job_b),
        site_path="site",
        # The job page's per-delivery cancel button (test_admin_delivery_cancel_...), its
        # progress block and its controls (test_admin_job_progress_and_controls_...).
        object_pages=("deliveries/<delivery_id>/cancel/", "progress/", "control/<verb>/"),
    ),
    AdminModel(
        SavedSegment, perms("", "vacd", "vacd"), lambda w, a: (w.segment_a, w.segment_b), site_path="site"
    ),
    AdminModel(
        HealthCheck, perms("v", "v", "v"), lambda w, a: (w.check_a, w.check_b), site_path="device__site"
    ),
    AdminModel(AuditLog, perms("v", "v", "v"), lambda w, a: (w.audit_a, w.audit_b), site_path="site"),
    # Alerts are opened and closed by monitoring; handling them is by actions (services).
    AdminModel(
        Alert,
        perms("v", "v", "v"),
        lambda w, a: (w.alert_a, w.alert_b),
        site_path="site",
        pages=(("fleet/", "v"),),  # the fleet dashboard: counts and open alerts of the caller's sites
    ),
    # How each alert was told: read-only; "retry now" is an action (the audited service).
    AdminModel(
        Notification,
        perms("v", "v", "v"),
        lambda w, a: (w.notification_a, w.notification_b),
        site_path="alert__site",
    ),
    # People, roles and credentials: administrators only. Users are deactivated, not deleted.
    AdminModel(User, perms("", "", "vac"), lambda w, a: (w.viewer, w.manager_b)),
    AdminModel(SiteMembership, perms("", "", "vacd"), lambda w, a: (w.membership_a, w.membership_b)),
    AdminModel(
        ApiToken,
        perms("", "", "vac"),
        lambda w, a: (w.tokens.get(a, w.tokens["viewer"]), w.tokens["manager_b"]),
        own_rows=True,
    ),
    AdminModel(Group, perms("", "", "vacd"), lambda w, a: (w.group_a, w.group_b)),
]
ADMIN_BY_LABEL = {entry.label: entry for entry in ADMIN}

SITE_WIDE_ADMIN_ROUTES = {
    "admin/",
    "admin/glance/",  # the landing page's refresh: the fleet at a glance, scoped
    "admin/login/",
    "admin/logout/",
    "admin/password_change/",
    "admin/password_change/done/",
    "admin/autocomplete/",
    "admin/jsi18n/",
    "admin/r/<content_type_id>/<object_id>/",
    "admin/<app_label>/",
    "admin/<url>",
}


def admin_routes_of(entry: AdminModel) -> set[str]:
    opts = entry.model._meta
    base = f"admin/{opts.app_label}/{opts.model_name}/"
    found = {base, f"{base}add/", *(f"{base}<object_id>/{view}/" for view in ("history", "delete", "change"))}
    found.add(f"{base}<object_id>/")  # Django's redirect from the old change URL
    found.update(f"{base}{page}" for page, _ in (*entry.pages, *entry.form_pages))
    found.update(f"{base}<object_id>/{page}" for page in entry.object_pages)
    if entry.model is User:
        found.add(f"{base}<id>/password/")
    return found


def test_every_admin_model_and_page_has_a_place_in_the_matrix():
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert registered == set(ADMIN_BY_LABEL)

    served = {route for route, _ in routes() if route.startswith("admin/")}
    covered = SITE_WIDE_ADMIN_ROUTES.union(*(admin_routes_of(entry) for entry in ADMIN))
    assert served == covered


# --- Callers -----------------------------------------------------------------------------------


@pytest.fixture
def browsers(world):
    """A logged-in Django test client per caller (and an anonymous one)."""
    clients = {"anon": Client()}
    for actor in ("viewer", "manager", "admin"):
        clients[actor] = Client()
        clients[actor].force_login(world.user(actor))
    return clients


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def outcome(response) -> str:
    """What an admin answer means: a status, "login" (sent to log in), "gone" (Django's
    "doesn't exist" redirect to the index, also the answer for rows outside the caller's
    scope), or "302 <path>" for any other redirect (a save or delete goes to the changelist)."""
    if response.status_code != 302:
        return str(response.status_code)
    location = response["Location"]
    if location.startswith(reverse("admin:login")):
        return "login"
    if location == reverse("admin:index") and any("doesn’t exist" in m for m in _messages(response)):
        return "gone"
    return f"302 {location.split('?')[0]}"


@dataclass
class AdminCheck:
    world: World
    browsers: dict
    problems: list[str] = field(default_factory=list)

    def ask(self, actor, method, url, data=None, *, want: str):
        client = self.browsers[actor]
        with rolled_back():
            response = client.post(url, data or {}) if method == "POST" else client.get(url)
            got = outcome(response)
            # A CSV export streams; its rows are checked like a page's.
            body = b"".join(response.streaming_content) if response.streaming else response.content
            if response.get("Content-Type") == XLSX_CONTENT_TYPE:
                text = xlsx_as_csv(body)  # compressed: read the sheet, or no row check could fail
            else:
                text = body.decode(errors="replace")
            context = response.context
        if got != want:
            self.problems.append(f"{method} {url} as {actor}: {got}, expected {want}")
        # No page a member gets (lists, forms and their choices, filters, confirmations,
        # history) shows anything of site B.
        if actor in MEMBERS and B_MARKER in text.lower():
            self.problems.append(f"{method} {url} as {actor} shows something of site B's side")
        return got, text, context


def _letter(entry: AdminModel, actor: str, letter: str) -> bool:
    return letter in entry.perms[actor]


def expected_admin(entry: AdminModel, actor: str, view: str, which: str) -> str:
    """Django's admin answers, as the policy letters imply. Django checks the permission
    (model-wide when the row is out of reach) before it says a row does not exist, except
    on the history page, which looks the row up first."""
    visible = actor == "admin" or entry.members_see(which)
    may = {
        "change": _letter(entry, actor, "v") or _letter(entry, actor, "c"),
        "save": _letter(entry, actor, "c"),
        "delete_page": _letter(entry, actor, "d"),
        "delete": _letter(entry, actor, "d"),
        "history": _letter(entry, actor, "v") or _letter(entry, actor, "c"),
    }[view]
    if view == "history" and not visible:
        return "gone"
    if not may:
        return "403"
    if not visible:
        return "gone"
    back_to_list = f"302 {entry.url('changelist')}"
    deleted = back_to_list if entry.deleted_answer == 302 else str(entry.deleted_answer)
    return {"change": "200", "history": "200", "delete_page": "200", "save": back_to_list, "delete": deleted}[
        view
    ]


def admin_form_of(entry: AdminModel, browsers, obj) -> dict:
    """The change form of `obj` as the admin's browser would submit it unchanged."""
    response = browsers["admin"].get(entry.url("change", obj.pk))
    assert response.status_code == 200
    return submitted_form(response.content.decode(), f"{entry.model._meta.model_name}_form")


@pytest.mark.parametrize("entry", ADMIN, ids=lambda entry: entry.label)
def test_admin_pages_answer_every_caller_as_the_policy_says(world, browsers, entry):
    check = AdminCheck(world, browsers)
    a_of_admin, b_of_admin = entry.objects(world, "admin")
    # What the admin's browser would send back unchanged: a save that may change nothing.
    forms = {A: {}, B: {}}
    if _letter(entry, "admin", "c"):
        forms = {A: admin_form_of(entry, browsers, a_of_admin), B: admin_form_of(entry, browsers, b_of_admin)}
    forms[MISSING] = forms[B]

    # Anonymous: every page sends to the login page.
    own_pages = [(entry.url("changelist") + page, letter) for page, letter in entry.pages]
    for url in (entry.url("changelist"), entry.url("add"), *_object_urls(entry, a_of_admin.pk)):
        check.ask("anon", "GET", url, want="login")
    for page, letter in entry.form_pages:
        url = entry.url("changelist") + page
        check.ask("anon", "GET", url, want="login")
        for actor in ("viewer", "manager", "admin"):
            check.ask(actor, "GET", url, want="200" if _letter(entry, actor, letter) else "403")
    for url, letter in own_pages:
        check.ask("anon", "GET", url, want="login")
        for actor in ("viewer", "manager", "admin"):
            page, text, _ = check.ask(
                actor, "GET", url, want="200" if _letter(entry, actor, letter) else "403"
            )
            if actor == "admin" and page == "200" and B_MARKER not in text.lower():
                check.problems.append(f"GET {url} as admin does not show site B's side")

    for actor in ("viewer", "manager", "admin"):
        may_view, may_add = _letter(entry, actor, "v"), _letter(entry, actor, "a")
        listed, text, context = check.ask(
            actor, "GET", entry.url("changelist"), want="200" if may_view else "403"
        )
        if listed == "200":
            check.problems += _changelist_problems(world, entry, actor, text, context)
        check.ask(actor, "GET", entry.url("add"), want="200" if may_add else "403")
        # An empty add form: refused outright, or shown again with its errors (nothing saved).
        check.ask(actor, "POST", entry.url("add"), {}, want="200" if may_add else "403")

        a, b = entry.objects(world, actor)
        answers = {}
        for which, pk in ((A, a.pk), (B, b.pk), (MISSING, MISSING_PK)):
            if which == MISSING and actor == "admin":
                continue
            answers[which] = _object_pages(check, entry, actor, which, pk, forms[which])
        if actor != "admin" and answers[B] != answers[MISSING]:
            check.problems.append(
                f"{entry.label} as {actor}: B's row answers {answers[B]}, a missing row {answers[MISSING]}"
            )

    assert check.problems == [], "\n".join(check.problems)


def _object_urls(entry: AdminModel, pk) -> list[str]:
    urls = [entry.url(view, pk) for view in ("change", "delete", "history")]
    urls.append(entry.url("changelist") + f"{pk}/")
    if entry.model is User:
        urls.append(reverse("admin:auth_user_password_change", args=[pk]))
    return urls


def _object_pages(check: AdminCheck, entry: AdminModel, actor: str, which: str, pk, form) -> list[str]:
    """Every page of one row; returns what each answered (to compare B's with a missing row)."""

    def expect(view):
        return expected_admin(entry, actor, view, which)

    changed, _, context = check.ask(actor, "GET", entry.url("change", pk), want=expect("change"))
    if changed == "200":
        # The buttons follow the policy too: a viewer's change page is a read-only view.
        shown = (bool(context["has_change_permission"]), bool(context["has_delete_permission"]))
        policy = (_letter(entry, actor, "c"), _letter(entry, actor, "d"))
        if shown != policy:
            check.problems.append(
                f"{entry.label} change page as {actor}: may (change, delete) {shown}, not {policy}"
            )
    answers = [
        changed,
        check.ask(actor, "POST", entry.url("change", pk), form, want=expect("save"))[0],
        check.ask(actor, "GET", entry.url("delete", pk), want=expect("delete_page"))[0],
        check.ask(actor, "POST", entry.url("delete", pk), {"post": "yes"}, want=expect("delete"))[0],
        check.ask(actor, "GET", entry.url("history", pk), want=expect("history"))[0],
    ]
    # The old-style URL only redirects to the change page (which decides), whatever the row.
    legacy = check.ask(
        actor, "GET", entry.url("changelist") + f"{pk}/", want=f"302 {entry.url('change', pk)}"
    )
    answers.append(legacy[0].replace(f"/{pk}/", "/<pk>/"))
    if entry.model is User:
        password = reverse("admin:auth_user_password_change", args=[pk])
        want = "200" if _letter(entry, actor, "c") else "403"
        answers.append(check.ask(actor, "GET", password, want=want)[0])
    return answers


def _changelist_problems(world, entry: AdminModel, actor, text, context) -> list[str]:
    listed = {row.pk for row in context["cl"].result_list}
    a, b = entry.objects(world, actor)
    problems = []
    if entry.site_path is None:
        if actor == "admin" and not {a.pk, b.pk} <= listed:
            problems.append(f"{entry.label} changelist as admin misses rows")
        return problems
    sites = set(entry.model._default_manager.filter(pk__in=listed).values_list(entry.site_path, flat=True))
    problems += [
        f"{entry.label} changelist as {actor}: {problem}"
        for problem in scoped_listing(actor, listed, a.pk, b.pk, sites, world.site_a.pk)
    ]
    if actor == "admin" and B_MARKER not in text.lower():  # the marker check can fail
        problems.append(f"{entry.label} changelist as admin does not show site B's side")
    return problems


def stored_side(world: World, which: str) -> dict:
    """Everything of one site's side as stored, and the audit rows about it (all of them,
    for A: a viewer writes nothing anywhere)."""
    if which == A:
        objects = (
            world.site_a,
            world.device_a,
            world.job_a,
            world.check_a,
            world.alert_a,
            world.membership_a,
        )
        people, audit = (world.viewer,), AuditLog.objects.all()
    else:
        objects = (
            world.site_b,
            world.device_b,
            world.job_b,
            world.check_b,
            world.alert_b,
            world.membership_b,
        )
        people = (world.manager_b,)
        audit = AuditLog.objects.filter(
            Q(site=world.site_b) | Q(device=world.device_b) | Q(job=world.job_b) | Q(actor=world.manager_b)
        )
    state = {
        f"{type(obj).__name__} {obj.pk}": [
            model_to_dict(row) for row in type(obj)._default_manager.filter(pk=obj.pk)
        ]
        for obj in (*objects, *people)
    }
    state["audit rows"] = audit.count()
    state["credentials"] = list(
        DeviceCredential.objects.filter(device=world.device_a if which == A else world.device_b).values()
    )
    return state


@pytest.mark.parametrize("entry", ADMIN, ids=lambda entry: entry.label)
def test_admin_actions_of_members_never_touch_site_b_and_never_write_for_a_viewer(world, browsers, rf, entry):
    """Actions act on the changelist's rows, which are the caller's: a member who sends B's
    ids (or "select all") changes nothing of B and is shown nothing of B; a viewer's actions
    (offered or not) change nothing at all."""
    request = rf.get("/")
    request.user = world.admin
    actions = list(admin.site._registry[entry.model].get_actions(request))
    a, b = entry.objects(world, "admin")
    before = {A: stored_side(world, A), B: stored_side(world, B)}
    problems = []
    runs = [(actor, B, b) for actor in MEMBERS] + [("viewer", A, a)]
    for (actor, which, obj), action, select_across in itertools.product(runs, actions, ("0", "1")):
        data = {
            "action": action,
            "_selected_action": [str(obj.pk)],
            "index": "0",
            "select_across": select_across,
        }
        with rolled_back():
            response = browsers[actor].post(entry.url("changelist"), data)
            after = stored_side(world, which)
            text = response.content.decode(errors="replace")
        what = f"action {action} on {which}'s row (select_across={select_across}) of {entry.label} as {actor}"
        if response.status_code not in (200, 302, 403):
            problems.append(f"{what}: {response.status_code}")
        if after != before[which]:
            changed = sorted(key for key in after if before[which][key] != after[key])
            problems.append(f"{what} changed {changed}")
        if B_MARKER in text.lower():
            problems.append(f"{what} shows something of site B's side")

    assert problems == [], "\n".join(problems)


def test_admin_job_progress_and_controls_answer_every_caller_as_the_policy_says(world, browsers):
    """The job page's progress block (`<job>/progress/`, JSON, needs view) and its controls
    (`<job>/control/<verb>/`: a confirmation page on GET, the service on POST; needs the
    right to change the job). Anonymous callers are sent to log in; B's job answers A's
    members exactly as a missing one does; nothing of B's side is shown."""
    job_admin = ADMIN_BY_LABEL["jobs_app.job"]
    targets = {A: world.job_a.pk, B: world.job_b.pk, MISSING: MISSING_PK}
    problems = []
    for actor in ("anon", "viewer", "manager", "admin"):
        answers = {}
        for which in (A, B, MISSING):
            if which == MISSING and actor == "anon":
                continue
            pk = targets[which]
            visible = actor == "admin" and which != MISSING or which == A
            progress_url = reverse("admin:jobs_app_job_progress", args=[pk])
            control_url = reverse("admin:jobs_app_job_control", args=[pk, "cancel"])
            if actor == "anon":
                wants = ("login", "login", "login")
            else:
                may_change = _letter(job_admin, actor, "c")
                wants = (
                    "200" if visible else "404",
                    ("200" if visible else "gone") if may_change else "403",
                    (f"302 {job_admin.url('change', pk)}" if visible else "gone") if may_change else "403",
                )
            got = []
            for method, url in (("GET", progress_url), ("GET", control_url), ("POST", control_url)):
                with rolled_back():
                    client = browsers[actor]
                    response = client.post(url) if method == "POST" else client.get(url)
                    got.append(outcome(response))
                    shown = " ".join(_messages(response)) + response.content.decode(errors="replace")
                if actor in MEMBERS and B_MARKER in shown.lower():
                    problems.append(f"{method} {url} as {actor} shows something of site B's side")
            answers[which] = got
            if tuple(got) != wants:
                problems.append(f"job {which} as {actor}: {got}, expected {list(wants)}")
        if MISSING in answers and answers[B] != answers[MISSING] and actor != "admin":
            problems.append(f"as {actor}: B's job answers {answers[B]}, a missing one {answers[MISSING]}")
    assert problems == [], "\n".join(problems)


def test_admin_delivery_cancel_answers_every_caller_as_the_policy_says(world, browsers):
    """The job page's per-delivery cancel button posts to `<job>/deliveries/<delivery>/cancel/`.
    Like saving the job it needs the right to change it: anonymous callers are sent to log
    in, a viewer is refused, B's job "doesn't exist" for A's members (as a missing one), and
    a permitted post cancels the one delivery it names and goes back to the job's page."""
    job_admin = ADMIN_BY_LABEL["jobs_app.job"]
    targets = {
        A: (world.job_a.pk, world.delivery_a.pk),
        B: (world.job_b.pk, world.delivery_b.pk),
        MISSING: (MISSING_PK, MISSING_PK),
    }

    def expected(actor, which) -> str:
        if actor == "anon":
            return "login"
        if not _letter(job_admin, actor, "c"):
            return "403"
        if actor != "admin" and which != A:
            return "gone"
        return f"302 {job_admin.url('change', targets[which][0])}"

    def stored() -> dict:
        return dict(
            Delivery.objects.filter(pk__in=[world.delivery_a.pk, world.delivery_b.pk]).values_list(
                "pk", "status"
            )
        )

    before = stored()
    problems = []
    for actor in ("anon", "viewer", "manager", "admin"):
        answers = {}
        for which in (A, B, MISSING):
            if which == MISSING and actor in ("anon", "admin"):
                continue
            job_pk, delivery_pk = targets[which]
            url = reverse("admin:jobs_app_job_cancel_delivery", args=[job_pk, delivery_pk])
            with rolled_back():
                response = browsers[actor].post(url)
                got = outcome(response)
                after = stored()
                shown = " ".join(_messages(response)) + response.content.decode(errors="replace")
            answers[which] = got
            want = expected(actor, which)
            if got != want:
                problems.append(f"POST {url} as {actor}: {got}, expected {want}")
            cancelled = {pk for pk, status in after.items() if status == "cancelled" and before[pk] != status}
            if cancelled != ({delivery_pk} if want.startswith("302 ") else set()):
                problems.append(f"POST {url} as {actor} cancelled {sorted(cancelled)}")
            if actor in MEMBERS and B_MARKER in shown.lower():
                problems.append(f"POST {url} as {actor} shows something of site B's side")
            with rolled_back():
                fetched = outcome(browsers[actor].get(url))
            if fetched != ("login" if actor == "anon" else "405"):
                problems.append(f"GET {url} as {actor}: {fetched}")
        if MISSING in answers and answers[B] != answers[MISSING]:
            problems.append(f"as {actor}: B's job answers {answers[B]}, a missing one {answers[MISSING]}")

    # A's manager naming B's delivery on A's own job: back to A's page, nothing of B changed
    # or named.
    url = reverse("admin:jobs_app_job_cancel_delivery", args=[world.job_a.pk, world.delivery_b.pk])
    with rolled_back():
        response = browsers["manager"].post(url)
        if outcome(response) != f"302 {job_admin.url('change', world.job_a.pk)}" or stored() != before:
            problems.append(f"POST {url} as manager: {outcome(response)}, {stored()}")
        if B_MARKER in " ".join(_messages(response)).lower():
            problems.append(f"POST {url} as manager names site B's side")

    assert problems == [], "\n".join(problems)


# --- Autocomplete ------------------------------------------------------------------------------


def autocomplete_sources() -> list[tuple[str, str, str]]:
    """Every (app_label, model_name, field_name) the autocomplete view may be asked about:
    any relation, forward or reverse, whose far side (as Django resolves the name) has an
    admin. Django does not limit it to the fields a form declares, so all of them must stay
    in scope (and reverse ones, which no form has, are refused rather than failing)."""
    sources = set()
    for model in apps.get_models():
        for model_field in model._meta.get_fields(include_hidden=True):
            if not model_field.is_relation:
                continue
            remote = _autocomplete_target(model._meta.app_label, model._meta.model_name, model_field.name)
            if isinstance(remote, type) and admin.site.is_registered(remote):
                sources.add((model._meta.app_label, model._meta.model_name, model_field.name))
    return sorted(sources)


def _is_form_field(app_label, model_name, field_name) -> bool:
    return isinstance(apps.get_model(app_label, model_name)._meta.get_field(field_name), Field)


def _autocomplete_target(app_label, model_name, field_name):
    """The model the view would search: the far side of the field the name resolves to."""
    resolved = apps.get_model(app_label, model_name)._meta.get_field(field_name)
    return getattr(getattr(resolved, "remote_field", None), "model", None)


def test_declared_autocomplete_fields_are_among_the_checked_sources(rf, admin_user):
    request = rf.get("/")
    request.user = admin_user
    sources = {(app, model, name) for app, model, name in autocomplete_sources()}
    for model, model_admin in admin.site._registry.items():
        for name in model_admin.get_autocomplete_fields(request):
            assert (model._meta.app_label, model._meta.model_name, name) in sources
    assert ("devices_app", "device", "site") in sources


def test_autocomplete_answers_only_rows_the_caller_may_pick(world, browsers):
    problems = []
    url = reverse("admin:autocomplete")
    for app_label, model_name, field_name in autocomplete_sources():
        target = _autocomplete_target(app_label, model_name, field_name)._meta.label_lower
        entry = ADMIN_BY_LABEL.get(target)
        if entry is None:
            problems.append(f"autocomplete {model_name}.{field_name}: {target} has no entry in the matrix")
            continue
        query = {"app_label": app_label, "model_name": model_name, "field_name": field_name, "term": ""}
        what = f"autocomplete {model_name}.{field_name} ({entry.label})"
        for actor in ("anon", "viewer", "manager", "admin"):
            response = browsers[actor].get(url, query)
            got = outcome(response)
            if actor == "anon":
                want = "login"
            elif not _is_form_field(app_label, model_name, field_name):
                want = "403"
            else:
                want = "200" if _letter(entry, actor, "v") else "403"
            if got != want:
                problems.append(f"{what} as {actor}: {got}, expected {want}")
            if got != "200":
                continue
            listed = {int(row["id"]) for row in response.json()["results"]}
            a, b = entry.objects(world, actor)
            if actor == "viewer":
                # Choices fill forms that write: a viewer may pick nothing.
                if listed:
                    problems.append(f"{what} as viewer offers {sorted(listed)}")
            elif entry.site_path is None:
                if not {a.pk, b.pk} <= listed:  # only admins get this far
                    problems.append(f"{what} as {actor} misses rows: {sorted(listed)}")
            else:
                rows = entry.model._default_manager.filter(pk__in=listed)
                sites = set(rows.values_list(entry.site_path, flat=True))
                problems += [
                    f"{what} as {actor}: {problem}"
                    for problem in scoped_listing(actor, listed, a.pk, b.pk, sites, world.site_a.pk)
                ]
            if actor != "admin" and B_MARKER in response.content.decode().lower():
                problems.append(f"{what} as {actor} mentions site B's side")

    assert problems == [], "\n".join(problems)


# --- The rest of the console -----------------------------------------------------------------


def test_site_wide_admin_pages_answer_every_caller_as_the_policy_says(world, browsers):
    problems = []

    def ask(actor, method, url, want, data=None):
        with rolled_back():
            client = browsers[actor]
            response = client.post(url, data or {}) if method == "POST" else client.get(url)
            got = outcome(response)
            text = response.content.decode(errors="replace")
        if got != want:
            problems.append(f"{method} {url} as {actor}: {got}, expected {want}")
        return text

    index = reverse("admin:index")
    device_type = ContentType.objects.get_for_model(Device).pk
    staff_pages = [
        index,
        reverse("admin:fleet_glance"),
        reverse("admin:password_change"),
        reverse("admin:password_change_done"),
        reverse("admin:jsi18n"),
    ]
    app_labels = sorted({model._meta.app_label for model in admin.site._registry})
    store_apps = {"sites_app", "devices_app", "jobs_app", "monitoring_app"}
    for actor in ("anon", "viewer", "manager", "admin"):
        for url in staff_pages:
            text = ask(actor, "GET", url, "login" if actor == "anon" else "200")
            if actor in MEMBERS and B_MARKER in text.lower():
                problems.append(f"GET {url} as {actor} mentions site B's side")
        for label in app_labels:
            want = "login" if actor == "anon" else "200" if actor == "admin" or label in store_apps else "404"
            text = ask(actor, "GET", reverse("admin:app_list", args=[label]), want)
            if actor in MEMBERS and B_MARKER in text.lower():
                problems.append(f"app index {label} as {actor} mentions site B's side")
        # "View on site" needs a public URL, which no HOMEPOT model has: 404 for everyone,
        # A's device or B's alike (Django's own 404 page names neither).
        for device in (world.device_a, world.device_b):
            shortcut = reverse("admin:view_on_site", args=[device_type, device.pk])
            ask(actor, "GET", shortcut, "login" if actor == "anon" else "404")
        ask(actor, "GET", "/admin/no-such-page/", "login" if actor == "anon" else "404")
        ask(actor, "GET", reverse("admin:login"), "200" if actor == "anon" else f"302 {index}")
    for actor in ("viewer", "manager", "admin"):
        with rolled_back():
            leaving = Client()
            leaving.force_login(world.user(actor))
            assert leaving.post(reverse("admin:logout")).status_code == 200
    with rolled_back():
        assert outcome(Client().post(reverse("admin:logout"))) == f"302 {index}"

    assert problems == [], "\n".join(problems)


# --- Beyond the four callers -------------------------------------------------------------------


def test_a_manager_of_one_store_only_reads_a_store_they_view(world, client):
    """Model permissions come from any role the user holds; the row decides the rest: a
    manager of A who is a viewer of B sees B's device but cannot change or delete it."""
    SiteMembershipFactory(user=world.manager, site=world.site_b, role="viewer")
    api = api_client(world, "manager")
    device_b = f"/devices/{world.device_b.device_id}"

    assert api.get(device_b).status_code == 200
    assert api.patch(device_b, {"status": "error"}, format="json").status_code == 403
    assert api.delete(device_b).status_code == 403
    assert api.post(f"{device_b}/credential").status_code == 403

    client.force_login(world.manager)
    change = reverse("admin:devices_app_device_change", args=[world.device_b.pk])
    page = client.get(change)
    assert page.status_code == 200
    assert (page.context["has_change_permission"], page.context["has_delete_permission"]) == (False, False)
    assert client.post(change, {"name": "Hijacked"}).status_code == 403
    delete = reverse("admin:devices_app_device_delete", args=[world.device_b.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    world.device_b.refresh_from_db()
    assert (world.device_b.status, world.device_b.name) == ("online", "Zebra Till")


def test_a_manager_cannot_put_a_device_or_a_job_on_a_site_of_someone_else(world, browsers):
    """Writes name sites and devices too: B's are unknown to A's manager, in the API's
    bodies and in the console's forms (moving a device, targeting a job)."""
    api = api_client(world, "manager")
    moved = api.patch(
        f"/devices/{world.device_a.device_id}", {"site_id": world.site_b.site_id}, format="json"
    )
    job = {"site_id": world.site_a.site_id, "action": "update_config", "payload": {"volume": 3}}
    extra_site = api.post("/jobs", {**job, "extra_sites": [world.site_b.site_id]}, format="json")
    their_device = api.post("/jobs", {**job, "target_devices": [world.device_b.device_id]}, format="json")

    for response, field_name in (
        (moved, "site_id"),
        (extra_site, "extra_sites"),
        (their_device, "target_devices"),
    ):
        assert response.status_code == 400
        assert any(name.startswith(field_name) for name in response.json()["error"]["fields"])

    manager = browsers["manager"]
    device_admin, job_admin = ADMIN_BY_LABEL["devices_app.device"], ADMIN_BY_LABEL["jobs_app.job"]
    device_form = submitted_form(
        manager.get(device_admin.url("change", world.device_a.pk)).content.decode(), "device_form"
    )
    job_form = submitted_form(manager.get(job_admin.url("add")).content.decode(), "job_form")
    job_form.update(site=[str(world.site_a.pk)], action=["update_config"], payload=['{"volume": 3}'])
    attempts = [
        (
            device_admin.url("change", world.device_a.pk),
            {**device_form, "site": [str(world.site_b.pk)]},
            "site",
        ),
        (job_admin.url("add"), {**job_form, "site": [str(world.site_b.pk)]}, "site"),
        (job_admin.url("add"), {**job_form, "extra_sites": [str(world.site_b.pk)]}, "extra_sites"),
        (job_admin.url("add"), {**job_form, "target_devices": [str(world.device_b.pk)]}, "target_devices"),
    ]
    jobs_before = Job.objects.count()
    for url, data, field_name in attempts:
        page = manager.post(url, data)
        assert page.status_code == 200, (url, field_name)  # the form again, naming the field
        assert field_name in page.context["adminform"].form.errors, (url, field_name)

    world.device_a.refresh_from_db()
    assert world.device_a.site_id == world.site_a.pk
    assert Job.objects.count() == jobs_before
    # The same job form is fine on the manager's own site: the refusals above are about B.
    # (It opens the new job's page.)
    created = outcome(manager.post(job_admin.url("add"), job_form))
    assert created == f"302 {job_admin.url('change', Job.objects.latest('pk').pk)}"


def test_users_are_deactivated_in_the_admin_never_deleted(world, browsers):
    """No service deletes a user (so no audit row would record it) and their history keeps
    pointing at them; like the API, the console refuses, and offers deactivation instead."""
    admin_browser = browsers["admin"]
    target = world.manager_b
    changelist = reverse("admin:accounts_user_changelist")
    delete = reverse("admin:accounts_user_delete", args=[target.pk])

    assert admin_browser.get(delete).status_code == 403
    assert admin_browser.post(delete, {"post": "yes"}).status_code == 403
    page = admin_browser.get(changelist)
    offered = [name for name, _ in page.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in offered
    assert "deactivate_users" in offered
    refused = admin_browser.post(
        changelist, {"action": "delete_selected", "_selected_action": [target.pk], "post": "yes"}
    )
    assert refused.status_code in (200, 302)
    assert User.objects.filter(pk=target.pk).exists()

    last_row = AuditLog.objects.order_by("-id").values_list("id", flat=True).first()
    response = admin_browser.post(
        changelist,
        {"action": "deactivate_users", "_selected_action": [target.pk, world.viewer.pk], "index": "0"},
    )

    assert response.status_code == 302
    assert not User.objects.filter(pk__in=[target.pk, world.viewer.pk], is_active=True).exists()
    rows = AuditLog.objects.filter(id__gt=last_row)
    assert [(row.event_type, row.actor_id) for row in rows] == [("user.updated", world.admin.pk)] * 2
    assert api_client(world, "manager_b").get("/api/v1/auth/me").status_code == 401


def test_a_job_spread_over_other_stores_shows_members_only_their_own_stores(world, browsers):
    """A job is reached through its primary site, but an admin may spread it over other
    stores: A's members then see its A side only, not B's devices, deliveries or site."""
    world.job_a.extra_sites.add(world.site_b)
    Delivery.objects.create(job=world.job_a, device=world.device_b, site=world.site_b, status="sent")
    problems = []
    for actor in MEMBERS:
        api = api_client(world, actor)
        for url in (f"/api/v1/jobs/{world.job_a.pk}", f"/api/v1/jobs/{world.job_a.pk}/deliveries"):
            response = api.get(url)
            if response.status_code != 200 or B_MARKER in response.content.decode().lower():
                problems.append(f"GET {url} as {actor}: {response.status_code}, shows site B's side")
        page = browsers[actor].get(ADMIN_BY_LABEL["jobs_app.job"].url("change", world.job_a.pk))
        if B_MARKER in page.content.decode().lower():
            problems.append(f"the job's admin page as {actor} shows site B's side")

    assert problems == [], "\n".join(problems)
