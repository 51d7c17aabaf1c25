"""The exact bodies of job creation's 400 answers, byte for byte: each field's reason, the
field names, their order and the envelope (homepot.api). Recorded from main at b004a44 before
the create serializer's validation loop was changed (jobs4), to keep them as they were."""

import json

import pytest

from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from jobs_app.models import Job
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

ENVELOPE = '{"error":{"status":400,"code":"invalid","message":"The request has invalid fields.","fields":%s}}'

# name, the body's fields over {"site_id": "site-123", "action": "update_config"}, the answer's "fields"
CASES = [
    ("nothing", {}, {"site_id": ["This field is required."], "action": ["This field is required."]}),
    ("unknown_site", {"site_id": "site-999"}, {"site_id": ["Unknown site 'site-999'."]}),
    (
        "site_bool",
        {"site_id": True},
        {"site_id": ["Give the site's internal id (a number) or its site_id (a string)."]},
    ),
    (
        "site_list",
        {"site_id": [1]},
        {"site_id": ["Give the site's internal id (a number) or its site_id (a string)."]},
    ),
    ("site_null", {"site_id": None}, {"site_id": ["This field may not be null."]}),
    ("unknown_action", {"action": "format_disk"}, {"action": ['"format_disk" is not a valid choice.']}),
    ("action_int", {"action": 5}, {"action": ['"5" is not a valid choice.']}),
    ("action_null", {"action": None}, {"action": ["This field may not be null."]}),
    (
        "payload_list",
        {"payload": ["x"]},
        {"payload": ['Expected a dictionary of items but got type "list".']},
    ),
    (
        "payload_bad_key",
        {"action": "update_pos_payment_config", "payload": {"gateway_ulr": "x"}},
        {
            "payload.gateway_ulr": [
                "Unknown for Update POS payment configuration: it takes accepted_networks, "
                "contactless_limit, gateway_url, merchant_id, settlement_cutoff, timeout_seconds."
            ],
            "payload.gateway_url": ["This field is required."],
        },
    ),
    (
        "payload_missing_key",
        {"action": "update_pos_payment_config", "payload": {}},
        {"payload.gateway_url": ["This field is required."]},
    ),
    ("description_int", {"description": 5}, {"description": ["Not a valid string."]}),
    (
        "description_long",
        {"description": "x" * 10001},
        {"description": ["Ensure this field has no more than 10000 characters."]},
    ),
    ("description_null", {"description": None}, {"description": ["This field may not be null."]}),
    ("priority", {"priority": "urgent-ish"}, {"priority": ['"urgent-ish" is not a valid choice.']}),
    (
        "scheduled_at",
        {"scheduled_at": "tomorrow"},
        {
            "scheduled_at": [
                "Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            ]
        },
    ),
    ("ttl_text", {"ttl_seconds": "soon"}, {"ttl_seconds": ["A valid integer is required."]}),
    ("ttl_zero", {"ttl_seconds": 0}, {"ttl_seconds": ["Ensure this value is greater than or equal to 1."]}),
    (
        "ttl_long",
        {"ttl_seconds": 31536001},
        {"ttl_seconds": ["Ensure this value is less than or equal to 31536000."]},
    ),
    ("batch_zero", {"batch_size": 0}, {"batch_size": ["Ensure this value is greater than or equal to 1."]}),
    (
        "batch_big",
        {"batch_size": 10001},
        {"batch_size": ["Ensure this value is less than or equal to 10000."]},
    ),
    ("batch_text", {"batch_size": "x"}, {"batch_size": ["A valid integer is required."]}),
    ("batch_float", {"batch_size": 2.5}, {"batch_size": ["A valid integer is required."]}),
    (
        "per_site_zero",
        {"max_in_flight_per_site": 0},
        {"max_in_flight_per_site": ["Ensure this value is greater than or equal to 1."]},
    ),
    (
        "threshold_high",
        {"failure_threshold_percent": 101},
        {"failure_threshold_percent": ["Ensure this value is less than or equal to 100."]},
    ),
    (
        "threshold_low",
        {"failure_threshold_percent": -1},
        {"failure_threshold_percent": ["Ensure this value is greater than or equal to 0."]},
    ),
    (
        "windows_text",
        {"within_maintenance_windows": "yes"},
        {"within_maintenance_windows": ["Must be a valid boolean."]},
    ),
    (
        "in_flight_zero",
        {"max_in_flight": 0},
        {"max_in_flight": ["Ensure this value is greater than or equal to 1."]},
    ),
    (
        "canary_zero",
        {"rollout_canary": 0},
        {"rollout_canary": ["Ensure this value is greater than or equal to 1."]},
    ),
    (
        "waves_zero",
        {"rollout_waves": [0]},
        {"rollout_waves.0": ["Ensure this value is greater than or equal to 1."]},
    ),
    (
        "waves_high",
        {"rollout_waves": [101]},
        {"rollout_waves.0": ["Ensure this value is less than or equal to 100."]},
    ),
    (
        "waves_text",
        {"rollout_waves": "x"},
        {"rollout_waves": ['Expected a list of items but got type "str".']},
    ),
    (
        "waves_many",
        {"rollout_waves": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]},
        {"rollout_waves": ["Ensure this field has no more than 10 elements."]},
    ),
    (
        "waves_falling",
        {"rollout_waves": [50, 10]},
        {"rollout_waves": ["Each wave must reach more devices than the one before."]},
    ),
    (
        "gate_high",
        {"wave_gate_percent": 101},
        {"wave_gate_percent": ["Ensure this value is less than or equal to 100."]},
    ),
    (
        "soak_negative",
        {"wave_soak_seconds": -1},
        {"wave_soak_seconds": ["Ensure this value is greater than or equal to 0."]},
    ),
    ("approval_text", {"wave_approval": "maybe"}, {"wave_approval": ["Must be a valid boolean."]}),
    (
        "deferrals_high",
        {"max_deferrals": 101},
        {"max_deferrals": ["Ensure this value is less than or equal to 100."]},
    ),
    (
        "deferral_seconds_negative",
        {"max_deferral_seconds": -1},
        {"max_deferral_seconds": ["Ensure this value is greater than or equal to 0."]},
    ),
    (
        "exhausted",
        {"deferral_exhausted": "explode"},
        {"deferral_exhausted": ['"explode" is not a valid choice.']},
    ),
    ("rollback_text", {"rollback_on_failure": "x"}, {"rollback_on_failure": ["Must be a valid boolean."]}),
    (
        "extra_sites_text",
        {"extra_sites": "site-123"},
        {"extra_sites": ['Expected a list of items but got type "str".']},
    ),
    ("extra_sites_unknown", {"extra_sites": ["nope"]}, {"extra_sites.0": ["Unknown site 'nope'."]}),
    (
        "segment_key",
        {"segment": {"colour": ["red"]}},
        {"segment": ["Unknown segment key 'colour'; use device_type, firmware_version, status."]},
    ),
    (
        "segment_text",
        {"segment": "x"},
        {"segment": ['Give an object such as {"device_type": ["pos_terminal"]}.']},
    ),
    (
        "segment_value",
        {"segment": {"device_type": ["toaster"]}},
        {"segment": ["device_type: unknown value(s) 'toaster'."]},
    ),
    ("targets_unknown", {"target_devices": ["nope"]}, {"target_devices": ["Unknown device(s): nope."]}),
    ("targets_int", {"target_devices": [5]}, {"target_devices.0": ["Not a valid string."]}),
    ("saved_unknown", {"saved_segment": 99999}, {"saved_segment": ["Unknown saved segment 99999."]}),
    ("saved_text", {"saved_segment": "x"}, {"saved_segment": ["A valid integer is required."]}),
    (
        "several",
        {"site_id": "nope", "action": "x", "batch_size": 0, "description": 3},
        {
            "site_id": ["Unknown site 'nope'."],
            "batch_size": ["Ensure this value is greater than or equal to 1."],
            "action": ['"x" is not a valid choice.'],
            "description": ["Not a valid string."],
        },
    ),
]


def answer(fields: dict) -> str:
    """The body as the API's renderer writes it: compact, non-ASCII kept, keys in order."""
    return ENVELOPE % json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(("name", "body", "fields"), CASES, ids=[case[0] for case in CASES])
def test_a_bad_job_is_answered_with_exactly_these_bytes(admin_user, name, body, fields):
    site = SiteFactory(site_id="site-123")
    DeviceFactory(site=site)
    full = {} if name == "nothing" else {"site_id": "site-123", "action": "update_config", **body}
    response = token_client(admin_user).post("/api/v1/jobs", full, format="json")
    assert response.status_code == 400
    assert response.content.decode() == answer(fields)
    assert not Job.objects.exists()


def test_a_body_that_is_not_an_object_is_answered_as_before(admin_user):
    client = token_client(admin_user)
    response = client.post("/api/v1/jobs", "[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert response.content.decode() == answer(
        {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}
    )
    assert client.post("/api/v1/jobs", '{"site_id": ', content_type="application/json").status_code == 400
    assert not Job.objects.exists()
