"""Serializers of the jobs API: jobs as shown, jobs as created, deliveries, agent messages."""

import datetime

from rest_framework import relations, serializers
from rest_framework.fields import SkipField, empty

from devices_app.api.serializers import _check_json_value
from devices_app.models import Device
from homepot.api.fields import StrictBooleanField, StrictCharField
from homepot.api.serializers import PrebuiltFieldsMixin
from jobs_app.choices import DeferralExhausted, DeliveryStatus, JobAction, JobPriority
from jobs_app.models import Delivery, Job, SavedSegment
from jobs_app.payloads import payload_errors, schema_markdown
from jobs_app.services.deferral import MAX_DELAY_SECONDS, MAX_REASON
from sites_app.api.fields import SiteReferenceField

# --- A job's representation, planned once per serializer class --------------------------------
#
# DRF's Serializer.to_representation binds a fresh copy of each of a job's 44 fields to the
# serializer and reads each attribute through the generic `get_attribute` (a Mapping check and
# a callable check per field): two thirds of rendering a created job (docs/performance.md,
# issue 11, jobs4). The plan below does the same steps per field, in the same order, with the
# same field objects' own `to_representation`: method fields call the serializer's method; a
# field reading a concrete column of the model reads the attribute itself (a model instance is
# not a Mapping and a column's value is not called, so DRF's result is the same); the other
# fields (relations, dotted sources) use DRF's own get_attribute. Only field classes whose two
# methods read nothing but the instance and the field's settings (not the serializer, the
# context or the request) are shared this way; a serializer with any other field keeps DRF's
# loop.

_SELF_CONTAINED_FIELDS = (
    serializers.IntegerField,
    serializers.BigIntegerField,
    serializers.CharField,
    serializers.ChoiceField,
    serializers.BooleanField,
    serializers.DateTimeField,
    serializers.JSONField,
)
_SELF_CONTAINED_RELATIONS = (relations.PrimaryKeyRelatedField, relations.SlugRelatedField)
_COLUMN, _METHOD, _FIELD = "column", "method", "field"


def representation_plan(serializer_class) -> list[tuple] | None:
    """[(name, kind, field or method name)] for each readable field of `serializer_class`,
    built once (from an instance without context); None when a field is of a class not known
    to be self-contained."""
    if "_representation_plan" in serializer_class.__dict__:
        return serializer_class._representation_plan
    columns = {field.attname for field in serializer_class.Meta.model._meta.concrete_fields}
    plan = []
    for name, field in serializer_class().fields.items():
        if field.write_only:
            continue
        reads_a_column = field.source_attrs == [field.source] and field.source in columns
        if isinstance(field, serializers.SerializerMethodField):
            plan.append((name, _METHOD, field.method_name))
        elif type(field) in _SELF_CONTAINED_FIELDS and reads_a_column:
            plan.append((name, _COLUMN, field))
        elif type(field) in (*_SELF_CONTAINED_FIELDS, *_SELF_CONTAINED_RELATIONS):
            plan.append((name, _FIELD, field))
        else:
            plan = None
            break
    serializer_class._representation_plan = plan
    return plan


class PlannedRepresentationMixin:
    """A ModelSerializer's to_representation through representation_plan(): DRF's result,
    for the serializer's own model's instances."""

    def to_representation(self, instance):
        plan = representation_plan(type(self))
        if plan is None or not isinstance(instance, self.Meta.model):
            return super().to_representation(instance)
        answer = {}
        for name, kind, item in plan:
            if kind is _COLUMN:
                value = getattr(instance, item.source)
                answer[name] = None if value is None else item.to_representation(value)
            elif kind is _METHOD:
                answer[name] = getattr(self, item)(instance)
            else:
                try:
                    attribute = item.get_attribute(instance)
                except SkipField:
                    continue
                present = attribute.pk if isinstance(attribute, relations.PKOnlyObject) else attribute
                answer[name] = None if present is None else item.to_representation(attribute)
        return answer


class JobSerializer(PlannedRepresentationMixin, PrebuiltFieldsMixin, serializers.ModelSerializer):
    """A job as the API shows it; `progress` only on a single job (detail and actions)."""

    site_id = serializers.IntegerField(read_only=True)
    site = serializers.CharField(source="site.site_id", read_only=True)
    extra_sites = serializers.SerializerMethodField(help_text="More targeted sites (those you may see).")
    target_devices = serializers.SerializerMethodField(help_text="Hand-picked devices (those you may see).")
    ttl_seconds = serializers.SerializerMethodField()
    wave_soak_seconds = serializers.SerializerMethodField()
    # Related fields, not CharField(source="created_by.username", default=None): DRF skips a
    # dotted source's default in a partial update, which drops the key from the answer.
    created_by = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Who created the job; null for jobs the system created.",
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "site_id",
            "site",
            "extra_sites",
            "segment",
            "target_devices",
            "action",
            "description",
            "payload",
            "priority",
            "status",
            "status_reason",
            "scheduled_at",
            "ttl_seconds",
            "batch_size",
            "max_in_flight_per_site",
            "failure_threshold_percent",
            "within_maintenance_windows",
            "max_in_flight",
            "rollout_canary",
            "rollout_waves",
            "wave_gate_percent",
            "wave_soak_seconds",
            "wave_approval",
            "wave_count",
            "wave_open",
            "max_deferrals",
            "max_deferral_seconds",
            "deferral_exhausted",
            "rollback_on_failure",
            "rollback_of",
            "rolled_back_by",
            "cloned_from",
            "saved_segment",
            "created_by",
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
        ]
        read_only_fields = fields

    def _visible_sites(self):
        # Computed once per response: a member sees only their own stores' side of a job an
        # admin spread over other stores too.
        if "_visible_sites" not in self.context:
            from jobs_app.selectors import visible_site_ids

            request = self.context.get("request")
            self.context["_visible_sites"] = visible_site_ids(getattr(request, "user", None))
        return self.context["_visible_sites"]

    def get_extra_sites(self, job) -> list[str]:
        if getattr(job, "created_without_targets", False):
            return []
        visible = self._visible_sites()
        return [s.site_id for s in job.extra_sites.all() if visible is None or s.pk in visible]

    def get_target_devices(self, job) -> list[str]:
        if getattr(job, "created_without_targets", False):
            return []
        visible = self._visible_sites()
        return [d.device_id for d in job.target_devices.all() if visible is None or d.site_id in visible]

    rolled_back_by = serializers.SerializerMethodField(
        help_text="The rollback job that undoes this one, if any (its id)."
    )

    def get_wave_soak_seconds(self, job) -> int | None:
        return int(job.wave_soak.total_seconds()) if job.wave_soak else None

    def get_ttl_seconds(self, job) -> int | None:
        return int(job.ttl.total_seconds()) if job.ttl else None

    def get_rolled_back_by(self, job) -> int | None:
        # The reverse of a one-to-one: asked only on a single job (detail, actions); lists
        # annotate it (selectors.job_list) so a page costs no query per row.
        if hasattr(job, "rolled_back_by_id"):
            return job.rolled_back_by_id
        rollback = Job.objects.filter(rollback_of=job.pk).values_list("pk", flat=True).first()
        return rollback


class ProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    percent = serializers.FloatField()
    rate_per_second = serializers.FloatField(allow_null=True)
    eta_seconds = serializers.FloatField(allow_null=True)
    deferred = serializers.IntegerField(
        help_text="Pending deliveries waiting out a device's deferral (counted in `pending`)."
    )
    next_offer_at = serializers.DateTimeField(
        allow_null=True, help_text="When the first deferred delivery is offered again."
    )


class WaveSerializer(serializers.Serializer):
    wave = serializers.IntegerField(help_text="0 is the first (the canary when there is one).")
    label = serializers.CharField()
    devices_reached = serializers.IntegerField(help_text="Devices in this wave and the ones before.")
    gate_percent = serializers.IntegerField(help_text="Success rate this wave needs for the next to open.")
    total = serializers.IntegerField()
    unfinished = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Failed or timed out.")
    success_percent = serializers.FloatField(allow_null=True, help_text="Completed of the answers so far.")
    state = serializers.CharField(
        help_text="waiting, open, done, soaking (n min left), awaiting approval, stopped by its gate."
    )


class JobDetailSerializer(JobSerializer):
    progress = serializers.SerializerMethodField()
    waves = serializers.SerializerMethodField(help_text="Each wave with its gate and numbers ([]: no waves).")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "progress", "waves"]
        read_only_fields = fields

    def get_progress(self, job) -> ProgressSerializer:
        from jobs_app.services import job_progress, job_progress_unmaterialised

        if self.context.get("created_now"):
            return job_progress_unmaterialised(job)
        return job_progress(job)

    def get_waves(self, job) -> WaveSerializer(many=True):
        from jobs_app.services import job_waves

        return job_waves(job)


def fields_skipped_when_absent(serializer_class) -> frozenset[str]:
    """The writable fields of `serializer_class` that DRF skips when their key is absent from
    the body: those whose run_validation of an absent value raises SkipField (neither
    required nor defaulted). Asked of DRF itself, once per class."""
    if "_skipped_when_absent" in serializer_class.__dict__:
        return serializer_class._skipped_when_absent
    skipped = set()
    for name, field in serializer_class().fields.items():
        if field.read_only:
            continue
        try:
            field.run_validation(empty)
        except SkipField:
            skipped.add(name)
        except Exception:  # noqa: BLE001, S110 - required (ValidationError) or anything else: not skipped
            pass
    serializer_class._skipped_when_absent = frozenset(skipped)
    return serializer_class._skipped_when_absent


class AbsentFieldsSkippedMixin:
    """DRF's validation loop without the fields DRF would skip anyway.

    Serializer.to_internal_value walks every writable field, and for one whose key a JSON
    body leaves out and that has neither a default nor `required`, it reads the missing
    value, runs the field's validation and catches the SkipField that comes back: most of the
    create serializer's 25 fields on a typical body, a sixth of validating it besides the
    site's lookup (docs/performance.md, issue 11, jobs4). For a JSON object body (a dict; not a form, not a
    partial update), those fields are left out of the walk; every other field, and every
    error, is DRF's, in DRF's order."""

    @property
    def _writable_fields(self):
        data = getattr(self, "initial_data", None)
        if type(data) is not dict or self.partial:
            yield from super()._writable_fields
            return
        skipped = fields_skipped_when_absent(type(self))
        for field in super()._writable_fields:
            if field.field_name in skipped and field.field_name not in data:
                continue
            yield field


class TargetsSerializer(AbsentFieldsSkippedMixin, PrebuiltFieldsMixin, serializers.Serializer):
    """Targets and rollout policy, shared by create and preview."""

    site_id = SiteReferenceField(help_text="The primary site: internal id (3) or business id (site-003).")
    extra_sites = serializers.ListField(
        child=SiteReferenceField(), required=False, default=list, max_length=1000, help_text="More sites."
    )
    segment = serializers.JSONField(
        required=False,
        default=dict,
        help_text='Only devices matching every list, e.g. {"device_type": ["pos_terminal"]}.',
    )
    target_devices = serializers.ListField(
        child=StrictCharField(max_length=64),
        required=False,
        default=list,
        max_length=10000,
        help_text="Hand-picked devices (device_id), at the job's sites.",
    )
    saved_segment = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="A saved segment's id: its filter is copied onto the job (instead of `segment`).",
    )
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=10000)
    max_in_flight_per_site = serializers.IntegerField(required=False, allow_null=True, min_value=1)

    def validate_saved_segment(self, value):
        if value is None:
            return None
        request = self.context.get("request")
        saved = SavedSegment.objects.for_user(getattr(request, "user", None)).filter(pk=value).first()
        if saved is None:
            raise serializers.ValidationError(f"Unknown saved segment {value}.")
        return saved

    def validate_target_devices(self, value):
        if not value:
            return []
        request = self.context.get("request")
        found = {
            d.device_id: d
            for d in Device.objects.for_user(getattr(request, "user", None), "change").filter(
                device_id__in=value
            )
        }
        unknown = sorted(set(value) - set(found))
        if unknown:
            raise serializers.ValidationError(f"Unknown device(s): {', '.join(unknown[:10])}.")
        return list(found.values())

    def validate_segment(self, value):
        from django.core.exceptions import ValidationError

        from jobs_app.services import clean_segment

        try:
            return clean_segment(value)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["segment"]) from None


class PreviewRequestSerializer(TargetsSerializer):
    """What a preview is asked about: the targets and rollout policy, and the action (whose
    default decides whether the job keeps to maintenance windows) or that choice itself."""

    action = serializers.ChoiceField(choices=JobAction.choices, required=False)
    within_maintenance_windows = StrictBooleanField(required=False, allow_null=True)


class JobCreateSerializer(TargetsSerializer):
    action = serializers.ChoiceField(choices=JobAction.choices)
    payload = serializers.DictField(
        required=False,
        default=dict,
        help_text="The work's settings, an object whose keys depend on `action` (unknown keys are "
        "refused; a bad one is a 400 naming `payload.<key>`):\n\n" + schema_markdown(),
    )
    description = StrictCharField(required=False, allow_blank=True, default="", max_length=10000)
    priority = serializers.ChoiceField(
        choices=JobPriority.choices, required=False, default=JobPriority.NORMAL
    )
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    ttl_seconds = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=365 * 86400, help_text="Delivery deadline."
    )
    failure_threshold_percent = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=100
    )
    within_maintenance_windows = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="Reach each site only inside its maintenance windows (GET /sites/{site_id}/maintenance). "
        "Absent or null: the action's default (HOMEPOT_JOBS_WINDOW_ACTIONS).",
    )
    max_in_flight = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="At most this many devices busy at once, all sites.",
    )
    rollout_canary = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Canary: this many devices first, at distinct sites.",
    )
    rollout_waves = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        required=False,
        max_length=10,
        help_text="Cumulative percent of the devices each wave reaches, rising, e.g. [1, 10, 50, 100] "
        "(a last 100 is added when missing).",
    )
    wave_gate_percent = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=100,
        help_text="The next wave opens only when at least this % of the last wave's answers succeeded "
        "(default 100); below it the job pauses.",
    )
    wave_soak_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=30 * 86400,
        help_text="Wait after a wave passes.",
    )
    wave_approval = serializers.BooleanField(
        required=False, help_text="A person approves each next wave (POST /jobs/<id>/approve-wave)."
    )
    max_deferrals = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=100,
        help_text='How many times each device may answer "not now" (default 3; 0: never).',
    )
    max_deferral_seconds = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=7 * 86400,
        help_text="The most delay each device may ask for in total (default 3600 s).",
    )
    deferral_exhausted = serializers.ChoiceField(
        choices=DeferralExhausted.choices,
        required=False,
        help_text="When a device that used up its deferrals asks again: force (default), skip, fail.",
    )
    rollback_on_failure = serializers.BooleanField(
        required=False,
        help_text="When the failure threshold pauses the job, roll back the devices that took the change.",
    )

    def validate_payload(self, value):
        _check_json_value(value)
        return value

    def validate(self, attrs):
        # The same check job_create makes, here so every bad key is named at once
        # (`payload.gateway_url`), next to the other fields' errors.
        errors = payload_errors(attrs["action"], attrs.get("payload", {}))
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

    def to_service_kwargs(self) -> dict:
        data = dict(self.validated_data)
        data["site"] = data.pop("site_id")
        ttl = data.pop("ttl_seconds", None)
        if ttl:
            data["ttl"] = datetime.timedelta(seconds=ttl)
        soak = data.pop("wave_soak_seconds", None)
        if soak is not None:
            data["wave_soak"] = datetime.timedelta(seconds=soak)
        return data


class JobUpdateSerializer(serializers.Serializer):
    description = StrictCharField(required=False, allow_blank=True, max_length=10000)
    priority = serializers.ChoiceField(choices=JobPriority.choices, required=False)
    action = serializers.ChoiceField(choices=JobAction.choices, required=False)
    payload = serializers.DictField(
        required=False, help_text="Checked against the job's action (see POST /jobs); only before dispatch."
    )

    def validate_payload(self, value):
        _check_json_value(value)
        return value


class RollbackSerializer(serializers.Serializer):
    """Optional overrides of the rollback job's rollout (by default the original's)."""

    max_in_flight_per_site = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="At most this many devices per site at once (default: the original job's; null: no limit).",
    )
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=10000)


class PauseSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)


class PreviewSerializer(serializers.Serializer):
    matching = serializers.IntegerField()
    online = serializers.IntegerField()
    with_unfinished_work = serializers.IntegerField()
    sites = serializers.IntegerField()
    largest_site_devices = serializers.IntegerField()
    batches = serializers.IntegerField()
    waves = serializers.IntegerField(help_text="Rounds the largest site needs under max_in_flight_per_site.")
    expected_duration_seconds = serializers.IntegerField()
    expected_duration_basis = serializers.CharField(help_text="What the estimate is based on, in words.")
    within_maintenance_windows = serializers.BooleanField(
        help_text="Whether the job would keep to the sites' maintenance windows."
    )
    sites_open_now = serializers.IntegerField(
        allow_null=True, help_text="Targeted sites inside their window now (null: windows do not apply)."
    )
    last_window_opens_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the last targeted site's window opens (the estimate includes the wait); null: "
        "every site is open now or windows do not apply.",
    )


class SavedSegmentSerializer(serializers.ModelSerializer):
    """A saved filter. `site_id` scopes it to one site's managers; null: everyone who runs a site."""

    site_id = SiteReferenceField(
        source="site",
        required=False,
        allow_null=True,
        help_text="The site whose managers may use it (id or site_id); null for everyone who runs a site.",
    )
    site = serializers.SlugRelatedField(
        slug_field="site_id",
        read_only=True,
        allow_null=True,
        help_text="The site's business id; null when not tied to one site.",
    )
    name = StrictCharField(max_length=100)
    segment = serializers.JSONField(
        help_text='Devices matching every list, e.g. {"device_type": ["pos_terminal"], "status": ["online"]}.'
    )
    owner = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Who saved it; null once that user is deleted.",
    )

    class Meta:
        model = SavedSegment
        fields = ["id", "name", "site_id", "site", "segment", "owner", "created_at", "updated_at"]
        read_only_fields = ["id", "site", "owner", "created_at", "updated_at"]

    def validate_segment(self, value):
        return TargetsSerializer.validate_segment(self, value)


class DeliverySerializer(serializers.ModelSerializer):
    device = serializers.CharField(source="device.device_id", read_only=True)
    site = serializers.CharField(source="site.site_id", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "job",
            "device",
            "site",
            "status",
            "attempts",
            "last_error",
            "result",
            "created_at",
            "sent_at",
            "acknowledged_at",
            "completed_at",
            "failed_at",
            "deadline",
            "next_attempt_at",
            "defer_count",
            "deferred_seconds",
            "defer_reason",
            "forced",
            "payload",
            "previous_config",
        ]
        read_only_fields = fields


# --- Agent ------------------------------------------------------------------------------------


class CommandSerializer(serializers.Serializer):
    """One piece of work in a device's mailbox."""

    delivery_id = serializers.IntegerField(source="pk")
    job_id = serializers.IntegerField()
    action = serializers.CharField(source="job.action")
    payload = serializers.SerializerMethodField(help_text="The work: the job's, or this device's own.")
    priority = serializers.CharField(source="job.priority")
    status = serializers.CharField()
    deadline = serializers.DateTimeField(allow_null=True)
    force = serializers.BooleanField(
        source="forced", help_text="Offered again after the deferral limit: do it now, do not defer."
    )

    def get_payload(self, delivery) -> dict:
        return delivery.job.payload if delivery.payload is None else delivery.payload


class CommandListSerializer(serializers.Serializer):
    commands = CommandSerializer(many=True)


class DeliveryStateSerializer(serializers.Serializer):
    """Where a delivery stands after the device's report (`cancelled`: drop the work)."""

    delivery_id = serializers.IntegerField(source="pk")
    status = serializers.CharField()


class DeferredStateSerializer(DeliveryStateSerializer):
    """Where a delivery stands after the device's deferral: `pending` with the time it is
    offered again, or what the job's policy decided once the deferrals ran out (`forced`:
    offered again now, do it; `cancelled`: skipped; `failed`)."""

    next_attempt_at = serializers.DateTimeField(allow_null=True, help_text="When the work is offered again.")
    defer_count = serializers.IntegerField(help_text="Deferrals granted so far.")
    deferred_seconds = serializers.IntegerField(help_text="Delay granted so far, in total.")
    forced = serializers.BooleanField()


class ResultSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=[DeliveryStatus.COMPLETED, DeliveryStatus.FAILED])
    details = serializers.JSONField(required=False, default=None, help_text="Anything the device wants kept.")
    error = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)
    previous_config = serializers.DictField(
        required=False,
        allow_null=True,
        default=None,
        help_text="What the device had before the change, for the settings the job touched "
        '(e.g. {"gateway_url": "https://old.example"}; null for a setting it did not have). '
        "Kept for a rollback; without it HOMEPOT uses its own record of the device's configuration.",
    )

    def validate_details(self, value):
        _check_json_value(value)
        return value

    def validate_previous_config(self, value):
        if value is not None:
            _check_json_value(value)
        return value


class DeferSerializer(serializers.Serializer):
    """A device's "not now" (e.g. a sale in progress)."""

    delay_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_DELAY_SECONDS, help_text="How long to wait before offering it again."
    )
    reason = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_REASON)
