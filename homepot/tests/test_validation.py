"""full_clean_batched: the errors of full_clean, with the check constraints in one query."""

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from homepot.validation import full_clean_batched
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


def test_every_check_constraint_is_asked_in_one_query():
    job = JobFactory.build(site=JobFactory().site, batch_size=0)
    with CaptureQueriesContext(connection) as django_way:
        errors_of(lambda j: j.full_clean(), job)
    with CaptureQueriesContext(connection) as batched:
        errors = errors_of(full_clean_batched, job)

    assert "batch_size" in str(errors) or errors.get("__all__")
    checks = [q for q in batched.captured_queries if "COALESCE" in q["sql"]]
    assert len(checks) == 1
    assert len(batched) < len(django_way) - 10
