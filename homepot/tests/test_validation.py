"""full_clean_batched: the errors of full_clean, with the check constraints decided in Python
where Python reproduces PostgreSQL's answer, the others in one query."""

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import CheckConstraint, F, Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from homepot.validation import _checks_decided_in_python, _failed_checks, full_clean_batched
from jobs_app.tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def errors_of(clean, job) -> dict:
    try:
        clean(job)
    except ValidationError as exc:
        return {field: sorted(str(m) for m in messages) for field, messages in exc.message_dict.items()}
    return {}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"batch_size": 0},
        {"max_in_flight_per_site": 0},
        {"failure_threshold_percent": 150},
        {"started_at": "now", "completed_at": "before"},
        {"priority": "urgent", "batch_size": 0},  # a field error and a constraint together
        {"action": "format_disk"},
    ],
)
def test_the_errors_are_the_ones_full_clean_gives(changes):
    job = JobFactory.build(site=JobFactory().site)
    now = timezone.now()
    moments = {"now": now, "before": now - datetime.timedelta(hours=1)}
    for name, value in changes.items():
        setattr(job, name, moments.get(value, value))

    assert errors_of(full_clean_batched, job) == errors_of(lambda j: j.full_clean(), job)


def test_a_new_job_is_validated_without_asking_the_database():
    job = JobFactory.build(site=JobFactory().site, batch_size=0)
    with CaptureQueriesContext(connection) as django_way:
        errors_of(lambda j: j.full_clean(), job)
    with CaptureQueriesContext(connection) as batched:
        errors = errors_of(full_clean_batched, job)

    assert "batch_size" in str(errors) or errors.get("__all__")
    assert not [q for q in batched.captured_queries if "COALESCE" in q["sql"]]
    assert len(batched) < len(django_way) - 10


NOW = timezone.now()
CONDITIONS = [
    Q(batch_size__gte=1),
    Q(max_in_flight_per_site__isnull=True) | Q(max_in_flight_per_site__gte=1),
    Q(completed_at__isnull=True) | Q(started_at__isnull=True) | Q(completed_at__gte=F("started_at")),
    Q(completed_at__gte=F("started_at")),  # NULL: passes
    ~Q(failure_threshold_percent__lte=100),  # NOT NULL is still NULL
    Q(wave_open__lt=F("wave_count")),
    ~Q(priority="urgent") & Q(action__in=["update_config", "restart_pos_app"]),
    Q(status="scheduled") | Q(scheduled_at=None),
    Q(scheduled_at__isnull=False),
    Q(batch_size__gt=5) & Q(failure_threshold_percent__lt=50),
]
JOBS = [
    {},
    {"batch_size": 0, "failure_threshold_percent": None},
    {"max_in_flight_per_site": 0, "failure_threshold_percent": 150, "wave_open": 3, "wave_count": 1},
    {"started_at": NOW, "completed_at": NOW - datetime.timedelta(hours=1), "priority": "urgent"},
    {"started_at": NOW, "completed_at": NOW, "action": "health_check", "scheduled_at": NOW},
    {"batch_size": 10, "failure_threshold_percent": 49, "status": "scheduled"},
]


@pytest.mark.parametrize("changes", JOBS)
def test_python_decides_each_condition_as_postgresql_does(changes):
    job = JobFactory.build(site=JobFactory().site, **changes)
    checks = [(type(job), CheckConstraint(condition=c, name=f"c{i}")) for i, c in enumerate(CONDITIONS)]

    remaining, failed_in_python = _checks_decided_in_python(job, checks, set())
    failed_in_postgresql = _failed_checks(job, checks, set(), "default")

    assert remaining == []
    assert [c.name for c in failed_in_python] == [c.name for c in failed_in_postgresql]


def test_a_condition_python_cannot_reproduce_is_asked_of_the_database():
    job = JobFactory.build(site=JobFactory().site, description="Zebra")
    checks = [
        (type(job), CheckConstraint(condition=Q(description__gt="apple"), name="collation_order")),
        (type(job), CheckConstraint(condition=Q(description__regex="^Z"), name="regex")),
        (type(job), CheckConstraint(condition=Q(batch_size__gte=1), name="plain")),
    ]

    remaining, failed = _checks_decided_in_python(job, checks, set())

    assert [c.name for _, c in remaining] == ["collation_order", "regex"] and failed == []


def test_every_check_constraint_left_to_the_database_is_asked_in_one_query():
    job = JobFactory.build(site=JobFactory().site, description="Zebra")
    checks = [
        (type(job), CheckConstraint(condition=Q(description__regex="^Z"), name="regex")),
        (type(job), CheckConstraint(condition=Q(description__regex="^A"), name="other_regex")),
    ]
    with CaptureQueriesContext(connection) as queries:
        failed = _failed_checks(job, checks, set(), "default")

    assert [c.name for c in failed] == ["other_regex"]
    assert len([q for q in queries.captured_queries if "COALESCE" in q["sql"]]) == 1
