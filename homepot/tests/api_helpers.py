"""Helpers shared by the API tests of every app."""

from rest_framework.test import APIClient

from accounts.services import api_token_issue

# The body of the guide's "Add a new site" example, verbatim.
GUIDE_SITE = {
    "site_id": "site-003",
    "name": "North Branch",
    "description": "Northern retail location with 4 POS terminals",
    "location": "789 North Ave, North Side",
}


def bearer(raw_key: str) -> APIClient:
    """A client that sends `raw_key` as its bearer token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def token_client(user) -> APIClient:
    """A client authenticated as `user` with a real API token (issuing it is audited)."""
    _, raw = api_token_issue(user=user, name="tests")
    client = bearer(raw)
    client.user = user
    return client


def assert_error(response, status: int, field: str | None = None, code: str | None = None) -> dict:
    """The one error shape: {"error": {"status", "code", "message", "fields"?}}."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status
    assert error["code"] and error["message"]
    if code:
        assert error["code"] == code
    if field:
        assert field in error["fields"], error
        assert error["fields"][field]
    return error
