"""The guided "new job" form of the admin: the chosen action's settings as ordinary form
fields (built from jobs_app/payloads.py, so the form asks for exactly what the API accepts),
targets as pickers instead of JSON, and the raw JSON kept for admins under "Advanced".

The payload and the segment built here are checked with the same functions `job_create`
uses (`payloads.payload_errors`, `services.clean_segment`), so a mistake is shown next to
its field instead of as a message after a failed save."""

import json
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from devices_app.choices import DeviceStatus, DeviceType
from jobs_app.choices import JobAction
from jobs_app.models import Job
from jobs_app.payloads import SCHEMAS, PayloadField, payload_errors

# The rollout policy's fields: on the new job's form (under "Advanced"), and read-only on the
# job's page once it exists (jobs_app.admin).
POLICY_FIELDS = (
    "within_maintenance_windows",
    "scheduled_at",
    "ttl",
    "batch_size",
    "max_in_flight_per_site",
    "failure_threshold_percent",
    "max_in_flight",
    "rollout_canary",
    "rollout_waves",
    "wave_gate_percent",
    "wave_soak",
    "wave_approval",
    "max_deferrals",
    "max_deferral_seconds",
    "deferral_exhausted",
    "rollback_on_failure",
)

# Setting lines of update_config: "name = value".
SETTINGS_FIELD = "settings"


def payload_field_name(action: str, name: str) -> str:
    return f"p__{action}__{name}"


def _form_field(spec: PayloadField) -> forms.Field:
    label = spec.label + (" (required)" if spec.required else "")
    common = {"required": False, "label": label, "help_text": spec.help}
    if spec.kind == "int":
        return forms.IntegerField(min_value=spec.min_value, max_value=spec.max_value, **common)
    if spec.kind == "number":
        return forms.DecimalField(min_value=spec.min_value, max_value=spec.max_value, **common)
    if spec.kind == "bool":
        return forms.TypedChoiceField(
            choices=(("", "— (terminal default)"), ("true", "Yes"), ("false", "No")),
            coerce=lambda v: v == "true",
            empty_value=None,
            **common,
        )
    if spec.kind in ("choices", "list"):
        return forms.MultipleChoiceField(
            choices=[(c, c) for c in spec.choices], widget=forms.CheckboxSelectMultiple, **common
        )
    widget = forms.URLInput(attrs={"size": 60}) if spec.kind == "url" else forms.TextInput(attrs={"size": 40})
    placeholder = {"time": "23:30", "semver": "4.2.1", "checksum": "sha256:…", "url": "https://"}
    if spec.kind in placeholder:
        widget.attrs["placeholder"] = placeholder[spec.kind]
    return forms.CharField(max_length=max(spec.max_length, 2000), widget=widget, strip=True, **common)


def payload_form_fields() -> dict[str, forms.Field]:
    """Every action's settings as form fields, named p__<action>__<key>; the admin shows
    the chosen action's (the others are hidden by a small script, or left out when the
    action is already known)."""
    fields = {}
    for action, schema in SCHEMAS.items():
        if schema.free_settings:
            fields[payload_field_name(action, SETTINGS_FIELD)] = forms.CharField(
                required=False,
                label="Settings",
                widget=forms.Textarea(
                    attrs={"rows": 4, "cols": 60, "placeholder": "receipt_footer = Thank you!"}
                ),
                help_text="One per line: name = value. Numbers, true/false and null are kept as such; "
                "anything else is text.",
            )
        for spec in schema.fields:
            fields[payload_field_name(action, spec.name)] = _form_field(spec)
    return fields


def _setting_value(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float)) else text


def parse_settings(text: str) -> tuple[dict, list[str]]:
    settings, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            problems.append(f"Line {number}: write name = value.")
            continue
        settings[name.strip()] = _setting_value(value.strip())
    return settings, problems


def _json_value(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class JobAddForm(forms.ModelForm):
    """Declared fields on top of the model's: the per-action settings and the segment's
    lists. `payload` and `segment` stay model fields (raw JSON) for the admins' "Advanced"
    section; when left empty they are built from the fields above."""

    device_types = forms.MultipleChoiceField(
        required=False,
        choices=DeviceType.choices,
        widget=forms.CheckboxSelectMultiple,
        label="Device types",
        help_text="None ticked: every type.",
    )
    device_statuses = forms.MultipleChoiceField(
        required=False,
        choices=DeviceStatus.choices,
        widget=forms.CheckboxSelectMultiple,
        label="Device status now",
        help_text="None ticked: whatever their status.",
    )
    firmware_versions = forms.CharField(
        required=False,
        label="Firmware versions",
        help_text="Comma-separated, e.g. 4.1.7, 4.1.8. Empty: any version.",
        widget=forms.TextInput(attrs={"size": 40}),
    )
    within_maintenance_windows = forms.TypedChoiceField(
        required=False,
        label="Only inside maintenance windows",
        choices=(
            ("", "As the action does by default"),
            ("yes", "Yes: each site only while its window is open, never on its blackout dates"),
            ("no", "No: as soon as possible"),
        ),
        coerce=lambda value: {"yes": True, "no": False}.get(value),
        empty_value=None,
        help_text="The sites' trading hours (maintenance windows, on each site's page). By default "
        "software updates keep to them (HOMEPOT_JOBS_WINDOW_ACTIONS).",
    )
    rollout_waves = forms.CharField(
        required=False,
        label="Waves",
        help_text="Cumulative percent of the devices each wave reaches, comma-separated, e.g. "
        "1, 10, 50, 100 (100 is added when missing). Empty: no waves (unless a canary is set).",
        widget=forms.TextInput(attrs={"size": 20, "placeholder": "1, 10, 50, 100"}),
    )
    locals().update(payload_form_fields())

    class Meta:
        model = Job
        # The admin narrows this to its fieldsets; these are every field a new job may set.
        fields = (
            "site",
            "action",
            "priority",
            "description",
            "payload",
            "extra_sites",
            "saved_segment",
            "segment",
            "target_devices",
            *POLICY_FIELDS,
        )

    def _raw(self, name) -> object | None:
        """The admin's raw JSON for `name` when given and not empty; None otherwise."""
        if name not in self.fields:
            return None
        value = self.cleaned_data.get(name)
        return value if value not in (None, {}, "", []) else None

    def _build_payload(self, action: str) -> dict:
        schema = SCHEMAS[action]
        if schema.free_settings:
            text = self.cleaned_data.get(payload_field_name(action, SETTINGS_FIELD)) or ""
            settings, problems = parse_settings(text)
            for problem in problems:
                self.add_error(payload_field_name(action, SETTINGS_FIELD), problem)
            return settings
        payload = {}
        for spec in schema.fields:
            value = self.cleaned_data.get(payload_field_name(action, spec.name))
            if value in (None, "", []):
                continue
            payload[spec.name] = _json_value(value)
        return payload

    def _clean_payload(self, action: str) -> None:
        raw = self._raw("payload")
        payload = raw if raw is not None else self._build_payload(action)
        for key, message in payload_errors(action, payload).items():
            name = key.partition(".")[2]
            target = (
                payload_field_name(action, SETTINGS_FIELD if SCHEMAS[action].free_settings else name)
                if raw is None
                else "payload"
            )
            if target not in self.fields:
                target = "payload" if "payload" in self.fields else None
                message = f"{name or 'payload'}: {message}"
            self.add_error(target, message)
        self.cleaned_data["payload"] = payload

    def _clean_segment(self) -> None:
        from jobs_app.services import clean_segment

        raw = self._raw("segment")
        if raw is None:
            versions = [v.strip() for v in (self.cleaned_data.get("firmware_versions") or "").split(",")]
            lists = {
                "device_type": self.cleaned_data.get("device_types") or [],
                "status": self.cleaned_data.get("device_statuses") or [],
                "firmware_version": [v for v in versions if v],
            }
            raw = {key: values for key, values in lists.items() if values}
        try:
            self.cleaned_data["segment"] = clean_segment(raw)
        except ValidationError as exc:
            field = "segment" if "segment" in self.fields and self._raw("segment") is not None else None
            self.add_error(field, exc.message_dict.get("segment", exc.messages))

    # The deferral policy under "Advanced": left empty (the section is collapsed, or a
    # client posts only what it changes), each takes the model's default.
    _POLICY_DEFAULTS = ("max_deferrals", "max_deferral_seconds", "deferral_exhausted")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self._POLICY_DEFAULTS:
            if name in self.fields:
                self.fields[name].required = False

    def _clean_policy_defaults(self, data: dict) -> None:
        for name in self._POLICY_DEFAULTS:
            if name in self.fields and data.get(name) in (None, ""):
                data[name] = Job._meta.get_field(name).default

    def clean_rollout_waves(self) -> list:
        text = self.cleaned_data.get("rollout_waves") or ""
        try:
            return [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ValidationError("Give whole percents separated by commas, e.g. 1, 10, 50, 100.") from None

    def _clean_rollout(self) -> None:
        """The waves and their gate, checked by the service's own rule (rollout.clean_rollout),
        each mistake shown next to its field."""
        from jobs_app.services.rollout import ROLLOUT_FIELDS, clean_rollout

        given = {name: self.cleaned_data.get(name) for name in ROLLOUT_FIELDS if name in self.fields}
        if "wave_approval" in given:
            given["wave_approval"] = bool(given["wave_approval"])
        try:
            self.cleaned_data.update(clean_rollout(**given))
        except ValidationError as exc:
            for field, problems in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, problems)

    def clean(self):
        data = super().clean()
        self._clean_policy_defaults(data)
        if "rollout_waves" in self.fields:
            self._clean_rollout()
        action = data.get("action")
        if action in JobAction.values:
            self._clean_payload(action)
        if data.get("segment") is not None or "device_types" in self.fields:
            self._clean_segment()
        if data.get("segment") and data.get("saved_segment"):
            self.add_error("saved_segment", "Pick a saved segment or device filters, not both.")
        return data
