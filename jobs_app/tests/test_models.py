import datetime

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("field", "value"), [("status", "lost"), ("priority", "urgent"), ("action", "rm_rf")]
)
def test_database_refuses_values_outside_the_choices(field, value):
    job = JobFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(**{field: value})


def test_a_job_cannot_complete_before_it_started():
    now = timezone.now()
    with pytest.raises(IntegrityError):
        JobFactory(started_at=now, completed_at=now - datetime.timedelta(minutes=1))


def test_active_jobs_are_the_unfinished_ones():
    queued, sent = JobFactory(status="queued"), JobFactory(status="sent")
    JobFactory(status="completed")
    JobFactory(status="cancelled")
    assert set(Job.objects.active()) == {queued, sent}


def test_deleting_the_creator_keeps_the_job():
    job = JobFactory()
    job.created_by.delete()
    job.refresh_from_db()
    assert job.created_by is None
