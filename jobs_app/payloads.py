"""What each job action carries: one declared schema per action, validated the same way
wherever a job's work is set (`job_create`, `job_update`: so the API, the admin and any
command agree), rendered as form fields by the admin and published in docs/jobs.md and the
OpenAPI description of `payload`.

A schema is a list of `PayloadField`s; a payload is a JSON object whose keys are those
fields' names. Unknown keys are refused (a typo such as `gateway_ulr` would otherwise be
sent to every terminal and silently ignored there). `update_config` is the exception: its
payload *is* a set of settings, any names, scalar values.

The schemas accept every payload the demo data and the terminals already use (e.g.
`restart_pos_app`'s `grace_period_s`, `health_check`'s `checks`), so stored jobs still
validate and clone.
"""

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from jobs_app.choices import JobAction

# Semantic Versioning 2.0.0 (https://semver.org), without a leading "v".
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
CHECKSUM = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
HH_MM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_SETTINGS = 100
MAX_TEXT = 2000

HEALTH_CHECKS = ("cpu", "memory", "disk", "network", "printer", "payment")


@dataclass(frozen=True)
class PayloadField:
    """One key of a payload.

    kind: "text", "url" (http/https with a host), "int", "number", "bool", "semver",
    "checksum" (sha256, 64 hex digits, optionally "sha256:"-prefixed), "time" (HH:MM),
    "choices" (a list of `choices`), "list" (a list of short strings)."""

    name: str
    kind: str
    label: str
    required: bool = False
    help: str = ""
    min_value: float | None = None
    max_value: float | None = None
    max_length: int = 200
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for docs and the OpenAPI description."""
        bounds = []
        if self.min_value is not None:
            bounds.append(f">= {self.min_value:g}")
        if self.max_value is not None:
            bounds.append(f"<= {self.max_value:g}")
        if self.choices:
            bounds.append("of " + ", ".join(self.choices))
        extra = f" ({'; '.join(bounds)})" if bounds else ""
        need = "required" if self.required else "optional"
        return f"`{self.name}` {self.kind}, {need}{extra}: {self.help or self.label}"


@dataclass(frozen=True)
class PayloadSchema:
    action: str
    fields: tuple[PayloadField, ...] = ()
    # update_config: any setting names with scalar values, instead of declared fields.
    free_settings: bool = False
    summary: str = ""

    def field(self, name: str) -> PayloadField | None:
        return next((f for f in self.fields if f.name == name), None)


SCHEMAS: dict[str, PayloadSchema] = {
    JobAction.UPDATE_POS_PAYMENT_CONFIG: PayloadSchema(
        JobAction.UPDATE_POS_PAYMENT_CONFIG,
        summary="Point the terminals at a payment gateway.",
        fields=(
            PayloadField("gateway_url", "url", "Gateway URL", required=True, help="https://… of the gateway"),
            PayloadField("merchant_id", "text", "Merchant ID", max_length=64),
            PayloadField(
                "timeout_seconds",
                "int",
                "Timeout (seconds)",
                min_value=1,
                max_value=300,
                help="How long a terminal waits for the gateway",
            ),
            PayloadField("contactless_limit", "number", "Contactless limit", min_value=0, max_value=100000),
            PayloadField(
                "accepted_networks",
                "choices",
                "Accepted card networks",
                choices=("visa", "mastercard", "amex", "discover", "maestro", "jcb", "unionpay"),
            ),
            PayloadField("settlement_cutoff", "time", "Settlement cut-off (HH:MM)"),
        ),
    ),
    JobAction.UPDATE_CONFIG: PayloadSchema(
        JobAction.UPDATE_CONFIG,
        summary="Set configuration values on the terminals: any setting names, each a text, "
        "number, true/false or null.",
        free_settings=True,
    ),
    JobAction.RESTART_POS_APP: PayloadSchema(
        JobAction.RESTART_POS_APP,
        summary="Restart the POS application.",
        fields=(
            PayloadField(
                "grace_period_s",
                "int",
                "Delay before restarting (seconds)",
                min_value=0,
                max_value=3600,
                help="Lets a sale in progress finish first",
            ),
            PayloadField("reason", "text", "Reason", max_length=500, help="Shown on the terminal and kept"),
        ),
    ),
    JobAction.SOFTWARE_UPDATE: PayloadSchema(
        JobAction.SOFTWARE_UPDATE,
        summary="Install a software version.",
        fields=(
            PayloadField("version", "semver", "Version", required=True, help="Semantic version, e.g. 4.2.1"),
            PayloadField("package", "text", "Package name", max_length=100),
            PayloadField("package_url", "url", "Package URL", help="Where terminals download it"),
            PayloadField("checksum", "checksum", "Checksum (SHA-256)", help="sha256:<64 hex digits>"),
            PayloadField("reboot", "bool", "Reboot after installing"),
        ),
    ),
    JobAction.HEALTH_CHECK: PayloadSchema(
        JobAction.HEALTH_CHECK,
        summary="Ask the terminals for a health report (nothing needed; optionally which checks).",
        fields=(PayloadField("checks", "choices", "Checks to run (none: all)", choices=HEALTH_CHECKS),),
    ),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field_error(spec: PayloadField, value) -> str | None:
    """Why `value` is not a valid `spec`, or None."""
    kind = spec.kind
    if kind in ("text", "url", "semver", "checksum", "time"):
        if not isinstance(value, str):
            return "Must be a text."
        if kind != "text" and not value:
            return "Must not be empty."
        if len(value) > (spec.max_length if kind == "text" else MAX_TEXT):
            return f"At most {spec.max_length} characters."
    if kind == "url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            return "Must be an http:// or https:// URL with a host."
    elif kind == "semver" and not SEMVER.match(value):
        return "Must be a semantic version such as 4.2.1."
    elif kind == "checksum" and not CHECKSUM.match(value):
        return "Must be a SHA-256 checksum: 64 lowercase hex digits, optionally prefixed sha256:."
    elif kind == "time" and not HH_MM.match(value):
        return "Must be a time HH:MM (24-hour)."
    elif kind == "bool" and not isinstance(value, bool):
        return "Must be true or false."
    elif kind in ("int", "number"):
        if not _is_number(value) or (kind == "int" and not float(value).is_integer()):
            return "Must be a whole number." if kind == "int" else "Must be a number."
        if spec.min_value is not None and value < spec.min_value:
            return f"Must be at least {spec.min_value:g}."
        if spec.max_value is not None and value > spec.max_value:
            return f"Must be at most {spec.max_value:g}."
    elif kind in ("choices", "list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "Must be a list of texts."
        unknown = [v for v in value if spec.choices and v not in spec.choices]
        if unknown:
            return f"Unknown: {', '.join(unknown[:5])}. Choose from {', '.join(spec.choices)}."
    return None


def payload_errors(action: str, payload) -> dict[str, str]:
    """{"payload.<key>": message} for everything wrong with `payload` for `action`
    ({"payload": ...} when it is not an object); empty when it is valid."""
    if not isinstance(payload, dict):
        return {"payload": "Must be an object."}
    schema = SCHEMAS.get(action)
    if schema is None:
        return {}  # the action itself is refused by its own field
    errors: dict[str, str] = {}
    if schema.free_settings:
        if len(payload) > MAX_SETTINGS:
            return {"payload": f"At most {MAX_SETTINGS} settings."}
        for name, value in payload.items():
            if not SETTING_NAME.match(name):
                errors[f"payload.{name}"] = (
                    "Setting names start with a letter and use letters, digits, _ . - (at most 64)."
                )
            elif not (value is None or isinstance(value, (str, bool)) or _is_number(value)):
                errors[f"payload.{name}"] = "A setting is a text, a number, true/false or null."
            elif isinstance(value, str) and len(value) > MAX_TEXT:
                errors[f"payload.{name}"] = f"At most {MAX_TEXT} characters."
        return errors
    known = {f.name for f in schema.fields}
    for name in payload:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "nothing"
            errors[f"payload.{name}"] = f"Unknown for {JobAction(action).label}: it takes {allowed}."
    for spec in schema.fields:
        if spec.name not in payload or payload[spec.name] is None:
            if spec.required:
                errors[f"payload.{spec.name}"] = "This field is required."
            continue
        problem = _field_error(spec, payload[spec.name])
        if problem:
            errors[f"payload.{spec.name}"] = problem
    return errors


def clean_payload(action: str, payload) -> dict:
    """`payload` if valid for `action`; otherwise ValidationError naming each bad key as
    `payload.<key>`. Keys with a null value are dropped (an optional setting left out)."""
    errors = payload_errors(action, payload)
    if errors:
        raise ValidationError({name: [message] for name, message in errors.items()})
    if SCHEMAS.get(action) and not SCHEMAS[action].free_settings:
        return {k: v for k, v in payload.items() if v is not None}
    return payload


def schema_markdown() -> str:
    """The schemas as Markdown (docs/jobs.md and the API's `payload` description)."""
    lines = []
    for action, schema in SCHEMAS.items():
        lines.append(f"- **`{action}`** ({JobAction(action).label}): {schema.summary}")
        lines.extend(f"  - {spec.describe()}" for spec in schema.fields)
    return "\n".join(lines)
