"""Devices authenticate as themselves: `Authorization: Device <credential>`.

A device is not a user. It gets a `DevicePrincipal`, which has no permissions and no sites,
so every operator endpoint refuses it; agent endpoints require `IsDevice` and act only on
`request.user.device`.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from devices_app.services import device_credential_authenticate, device_identity


class DevicePrincipal:
    """The authenticated device, in the place DRF keeps `request.user`."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    is_device = True
    pk = None

    def __init__(self, device):
        self.device = device

    def __str__(self) -> str:
        return self.get_username()

    def get_username(self) -> str:
        return f"device:{self.device.device_id}"

    def has_perm(self, perm, obj=None) -> bool:
        return False

    def has_perms(self, perm_list, obj=None) -> bool:
        return False

    def has_module_perms(self, app_label) -> bool:
        return False


class DeviceCredentialAuthentication(authentication.BaseAuthentication):
    keyword = "device"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Device <credential>'."
            )
        try:
            raw_key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid device credential.") from None
        device, credential = self.lookup(raw_key, request)
        if device is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked device credential.")
        return DevicePrincipal(device), credential

    def lookup(self, raw_key: str, request):
        """(device, credential) behind the key, or (None, None). A view whose class says
        `device_lookup = "identity"` (the ingest endpoints, which every terminal calls every
        minute and which read nothing else) gets the narrower lookup of the same rule,
        `device_identity` (from Redis when stored there), and `request.auth` None."""
        view = (getattr(request, "parser_context", None) or {}).get("view")
        if getattr(view, "device_lookup", "full") == "identity":
            return device_identity(raw_key), None
        credential = device_credential_authenticate(raw_key)
        return (credential.device, credential) if credential else (None, None)

    def authenticate_header(self, request):
        return 'Device realm="agent"'


class IsDevice(permissions.BasePermission):
    """Only an authenticated device (agent endpoints)."""

    message = "This endpoint is for devices, authenticated with their own credential."

    def has_permission(self, request, view):
        return bool(getattr(request.user, "is_device", False))


class DeviceCredentialScheme(OpenApiAuthenticationExtension):
    target_class = DeviceCredentialAuthentication
    name = "deviceCredential"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Device <credential>`: the secret issued when the device was registered.",
        }
