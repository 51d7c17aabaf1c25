"""Pieces of the authorization matrix (test_authorization_matrix.py) that are not policy:
the routes the URL resolver serves, the two-store world the matrix runs in, a savepoint
per request, and reading an admin form the way a browser submits it."""

import itertools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser

from django.contrib.auth.models import Group
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from accounts.services import api_token_issue
from accounts.tests.factories import AdminUserFactory, SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from jobs_app.models import Delivery, Job, SavedSegment
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import Alert, AuditLog, HealthCheck, Notification
from monitoring_app.tests.factories import AuditLogFactory, HealthCheckFactory
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

PASSWORD = "correct-horse-battery"  # the factories' password
# Every name, id and address of site B's side contains this word, so "nothing of site B"
# can be checked on whole pages: it must not appear in anything a member of site A gets.
B_MARKER = "zebra"

# --- Routes ------------------------------------------------------------------------------------


def normalize_route(route: str) -> str:
    """One spelling for Django's `<int:pk>` and a router's `^users/(?P<pk>[0-9]+)$`:
    `users/<pk>`. A trailing `/?` (one pattern answering with and without the slash) stays."""
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route)
    return route.replace("^", "").replace("$", "")


def routes(patterns=None, prefix: str = ""):
    """Every (normalized route, URLPattern) the project serves, includes flattened."""
    patterns = get_resolver().url_patterns if patterns is None else patterns
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield normalize_route(prefix + str(pattern.pattern)), pattern


def concrete(route: str, value=None) -> str:
    """The URL of a normalized route, with its placeholder (if any) set to `value`; a route
    with several placeholders (a job's delivery) takes a tuple, one value each, in order."""
    path = route.replace("/?", "")
    if "<" in path:
        values = iter(value) if isinstance(value, tuple) else itertools.repeat(value)
        path = re.sub(r"<\w+>", lambda _placeholder: str(next(values)), path)
    return "/" + path


def view_of(pattern: URLPattern):
    """The class behind a URL pattern, seen through homepot.api.routers.undocumented (which
    only hides a viewset from the OpenAPI schema), with the viewset's method→action map."""
    callback = pattern.callback
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None) or callback
    if isinstance(cls, type) and cls.__dict__.get("schema", ...) is None and len(cls.__bases__) == 1:
        cls = cls.__bases__[0]
    actions = getattr(callback, "actions", None)
    # DRF adds "head" to the map the first time the view answers; it follows "get" anyway.
    actions = {method: name for method, name in actions.items() if method != "head"} if actions else actions
    return cls, actions


# --- The world ---------------------------------------------------------------------------------


@dataclass
class World:
    """Two stores, A and B, each with a device, a job (sent to that device), a health check,
    an open alert and an audit row; a viewer and a manager of A, a manager of B, an admin, a user with no
    site yet, and a credential for A's device."""

    site_a: Site
    site_b: Site
    device_a: Device
    device_b: Device
    job_a: Job
    job_b: Job
    check_a: HealthCheck
    check_b: HealthCheck
    audit_a: AuditLog
    audit_b: AuditLog
    viewer: User
    manager: User
    admin: User
    manager_b: User
    outsider: User
    membership_a: SiteMembership
    membership_b: SiteMembership
    group_a: Group
    group_b: Group
    delivery_a: Delivery
    delivery_b: Delivery
    alert_a: Alert
    alert_b: Alert
    notification_a: Notification | None = None  # how alert_a / alert_b were told
    notification_b: Notification | None = None
    segment_a: SavedSegment | None = None  # saved job filters (jobs_app), one per store
    segment_b: SavedSegment | None = None
    tokens: dict[str, ApiToken] = field(default_factory=dict)  # actor -> their token row
    secrets: dict[str, str] = field(default_factory=dict)  # actor -> "Bearer ..." / "Device ..."

    def user(self, actor: str) -> User | None:
        return {"viewer": self.viewer, "manager": self.manager, "admin": self.admin}.get(actor)


def build_world() -> World:
    site_a = SiteFactory(site_id="site-alpha", name="Alpha Store", region="Alphaland", location="1 Alpha Way")
    site_b = SiteFactory(
        site_id="site-zebra",
        name="Zebra Store",
        region="Zebraland",
        location="9 Zebra Road",
        description="Zebra",
    )
    admin = AdminUserFactory(username="head-office", email="head-office@example.com")
    viewer = UserFactory(username="alpha-viewer", email="alpha-viewer@example.com", is_staff=True)
    manager = UserFactory(username="alpha-manager", email="alpha-manager@example.com", is_staff=True)
    manager_b = UserFactory(username="zebra-manager", email="zebra-manager@example.com", is_staff=True)
    outsider = UserFactory(username="newcomer", email="newcomer@example.com")
    membership_a = SiteMembershipFactory(user=viewer, site=site_a, role=MembershipRole.VIEWER)
    SiteMembershipFactory(user=manager, site=site_a, role=MembershipRole.MANAGER)
    membership_b = SiteMembershipFactory(user=manager_b, site=site_b, role=MembershipRole.MANAGER)
    device_a = DeviceFactory(site=site_a, device_id="till-alpha", name="Alpha Till")
    device_b = DeviceFactory(site=site_b, device_id="till-zebra", name="Zebra Till")
    job_a = JobFactory(site=site_a, created_by=admin, description="Alpha job")
    job_b = JobFactory(site=site_b, created_by=manager_b, description="Zebra job")
    world = World(
        site_a=site_a,
        site_b=site_b,
        device_a=device_a,
        device_b=device_b,
        job_a=job_a,
        job_b=job_b,
        check_a=HealthCheckFactory(device=device_a, error_message="alpha slow"),
        check_b=HealthCheckFactory(device=device_b, error_message="zebra down"),
        audit_a=AuditLogFactory(site=site_a, description="Alpha store renamed"),
        audit_b=AuditLogFactory(site=site_b, description="Zebra store renamed"),
        viewer=viewer,
        manager=manager,
        admin=admin,
        manager_b=manager_b,
        outsider=outsider,
        membership_a=membership_a,
        membership_b=membership_b,
        group_a=Group.objects.create(name="alpha-auditors"),
        group_b=Group.objects.create(name="zebra-auditors"),
        delivery_a=Delivery.objects.create(job=job_a, device=device_a, site=site_a, status="sent"),
        delivery_b=Delivery.objects.create(job=job_b, device=device_b, site=site_b, status="sent"),
        alert_a=_offline_alert(device_a, "Alpha till offline"),
        alert_b=_offline_alert(device_b, "Zebra till offline"),
    )
    world.notification_a = Notification.objects.create(
        alert=world.alert_a, channel="email", status="failed", attempts=8, last_error="HTTP 500"
    )
    world.notification_b = Notification.objects.create(
        alert=world.alert_b, channel="email", status="failed", attempts=8, last_error="HTTP 500"
    )
    world.segment_a = SavedSegment.objects.create(
        name="Alpha tills", site=site_a, owner=manager, segment={"device_type": ["pos_terminal"]}
    )
    world.segment_b = SavedSegment.objects.create(
        name="Zebra tills", site=site_b, owner=manager_b, segment={"device_type": ["pos_terminal"]}
    )
    for actor, user in (("viewer", viewer), ("manager", manager), ("admin", admin), ("manager_b", manager_b)):
        token, raw = api_token_issue(user=user, name=f"{actor} matrix")
        world.tokens[actor], world.secrets[actor] = token, f"Bearer {raw}"
    _, device_secret = device_credential_issue(actor=None, device=device_a)
    world.secrets["device"] = f"Device {device_secret}"
    return world


def _offline_alert(device: Device, message: str) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        site=device.site,
        device=device,
        kind="device_offline",
        severity="warning",
        message=message,
        opened_at=now,
        last_seen_at=now,
    )


@contextmanager
def rolled_back():
    """Run one request in a savepoint and undo whatever it wrote, so every request of a
    test meets the same world (a deleted device is back for the next actor)."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# --- Admin forms, as a browser submits them -----------------------------------------------------


class _FormReader(HTMLParser):
    """Collects what submitting one <form> would send: named, enabled inputs (checkboxes
    and radios only when checked), the selected options of selects (a single select with
    none selected sends its first option), and textareas."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.data: list[tuple[str, str]] = []
        self._select = None  # [name, multiple, selected values, first value]
        self._textarea = None  # [name, text]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside or "disabled" in attrs:
            return
        name = attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text").lower()
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            self.data.append((name, attrs.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "select" and name:
            self._select = [name, "multiple" in attrs, [], None]
        elif tag == "option" and self._select is not None:
            value = attrs.get("value", "")
            if self._select[3] is None:
                self._select[3] = value
            if "selected" in attrs:
                self._select[2].append(value)
        elif tag == "textarea" and name:
            self._textarea = [name, ""]

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select is not None:
            name, multiple, selected, first = self._select
            if not selected and not multiple and first is not None:
                selected = [first]
            self.data.extend((name, value) for value in selected)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            name, text = self._textarea
            self.data.append((name, text[1:] if text.startswith("\n") else text))
            self._textarea = None


def submitted_form(html: str, form_id: str) -> dict[str, list[str]]:
    """The body a browser would POST for the form `form_id` of `html` (with "Save")."""
    reader = _FormReader(form_id)
    reader.feed(html)
    reader.close()
    data: dict[str, list[str]] = {}
    for name, value in reader.data:
        data.setdefault(name, []).append(value)
    data["_save"] = ["Save"]
    return data
