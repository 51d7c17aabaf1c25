"""The jobs API: create, list, detail with progress, operator controls, deliveries (and
cancelling one), preview.

Scoping as everywhere: a job outside the caller's `view` scope is a 404; one they may see
but not `change` is a 403 on every write. Every action goes through an audited service.
"""

from django.core.exceptions import PermissionDenied
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from devices_app.models import Device
from homepot.api.pagination import CursorPagination
from homepot.api.permissions import ModelPermissions
from homepot.api.views import ServiceModelViewSet
from jobs_app import services
from jobs_app.api.serializers import (
    DeliverySerializer,
    JobCreateSerializer,
    JobDetailSerializer,
    JobSerializer,
    JobUpdateSerializer,
    PauseSerializer,
    PreviewRequestSerializer,
    PreviewSerializer,
    RollbackSerializer,
    SavedSegmentSerializer,
)
from jobs_app.choices import DeliveryStatus
from jobs_app.filters import DeliveryFilterSet, JobFilterSet
from jobs_app.models import Job, SavedSegment
from jobs_app.selectors import job_as_created, job_deliveries, job_list
from monitoring_app.services import audited_atomic


class JobPagination(CursorPagination):
    ordering = "-id"  # newest first; id follows creation order and is the primary key


class RetriedSerializer(JobDetailSerializer):
    retried = serializers.IntegerField(read_only=True)

    class Meta(JobDetailSerializer.Meta):
        fields = [*JobDetailSerializer.Meta.fields, "retried"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(
        summary="List jobs",
        description="Jobs of the sites you may see, newest first, in keyset (cursor) pages. "
        "`device=<device_id>` lists the jobs of one device.",
    ),
    retrieve=extend_schema(summary="Get a job with its progress", responses=JobDetailSerializer),
    create=extend_schema(
        summary="Create a job",
        description="Targets: `site_id`, optional `extra_sites`, a `segment` and hand-picked "
        "`target_devices`; rollout policy: `batch_size`, `max_in_flight_per_site`, "
        "`failure_threshold_percent`; optional `scheduled_at` and `ttl_seconds`. You must "
        "manage every targeted site.",
        request=JobCreateSerializer,
        responses={201: JobDetailSerializer},
    ),
    partial_update=extend_schema(
        summary="Change a job's description or priority (its work only while still queued)",
        request=JobUpdateSerializer,
        responses=JobDetailSerializer,
    ),
)
class JobViewSet(ServiceModelViewSet):
    """Configuration jobs, addressed by their id (`/jobs/42`)."""

    serializer_class = JobSerializer
    filterset_class = JobFilterSet
    pagination_class = JobPagination
    ordering_fields = ["id"]
    ordering = ["-id"]
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "head", "options"]

    permission_model = Job  # the model of job_list, for ModelPermissions

    def get_queryset(self):
        return job_list(user=self.request.user)

    def get_serializer_class(self):
        if self.action == "list":
            return JobSerializer
        if self.action in ("create", "preview"):
            return JobCreateSerializer if self.action == "create" else PreviewRequestSerializer
        if self.action == "partial_update":
            return JobUpdateSerializer
        return JobDetailSerializer

    def site_of(self, instance):
        return instance.site

    def _answer(self, job, code=status.HTTP_200_OK, **extra):
        data = JobDetailSerializer(self._fresh(job), context=self.get_serializer_context()).data
        return Response({**data, **extra}, status=code)

    def create(self, request, *args, **kwargs):
        # Not wrapped in a transaction of its own: job_create is one (audited, its dispatch
        # enqueued after its commit), and the answer needs nothing more from the database. A
        # new job is what the request just wrote, with no delivery yet (the dispatcher
        # materialises them after commit), so it is not read back (docs/performance.md).
        serializer = JobCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        kwargs = serializer.to_service_kwargs()
        job = services.job_create(actor=request.user, **kwargs)
        had_targets = bool(kwargs.get("extra_sites") or kwargs.get("target_devices"))
        context = {**self.get_serializer_context(), "created_now": True}
        data = JobDetailSerializer(job_as_created(job, had_targets=had_targets), context=context).data
        return Response(data, status=status.HTTP_201_CREATED)

    @audited_atomic()
    def partial_update(self, request, *args, **kwargs):
        job = self.get_object()
        serializer = JobUpdateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return self._answer(services.job_update(actor=request.user, job=job, **serializer.validated_data))

    def update(self, request, *args, **kwargs):
        if not kwargs.get("partial"):
            return self.http_method_not_allowed(request, *args, **kwargs)
        return self.partial_update(request, *args, **kwargs)

    @extend_schema(summary="Pause the rollout", request=PauseSerializer, responses=JobDetailSerializer)
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def pause(self, request, pk=None):
        job = self.get_object()
        serializer = PauseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self._answer(services.job_pause(actor=request.user, job=job, **serializer.validated_data))

    @extend_schema(summary="Resume a paused rollout", request=None, responses=JobDetailSerializer)
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def resume(self, request, pk=None):
        return self._answer(services.job_resume(actor=request.user, job=self.get_object()))

    @extend_schema(
        summary="Cancel a job (pending and unacknowledged deliveries are cancelled)",
        request=None,
        responses=JobDetailSerializer,
    )
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def cancel(self, request, pk=None):
        return self._answer(services.job_cancel(actor=request.user, job=self.get_object()))

    @extend_schema(
        summary="Retry the failed and timed-out deliveries", request=None, responses=RetriedSerializer
    )
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def retry(self, request, pk=None):
        job = self.get_object()
        retried = services.job_retry(actor=request.user, job=job)
        return self._answer(job, retried=retried)

    @extend_schema(
        summary="Clone a job (same work, targets and policy; queued now)",
        request=None,
        responses={201: JobDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def clone(self, request, pk=None):
        job = self.get_object()
        return self._answer(services.job_clone(actor=request.user, job=job), status.HTTP_201_CREATED)

    @extend_schema(
        summary="Approve the job's next wave",
        description="Opens the next wave of a job rolling out in waves when the open wave has "
        "finished at or above its gate, its soak time is over and the job asks for approval; or, "
        "overriding the gate, when the job was paused because the wave finished below it (the job "
        "then runs again). 409 (`no_wave_awaiting_approval`) when no wave awaits approval.",
        request=None,
        responses=JobDetailSerializer,
    )
    @action(detail=True, methods=["post"], url_path="approve-wave", url_name="approve-wave")
    @audited_atomic()
    def approve_wave(self, request, pk=None):
        return self._answer(services.job_wave_approve(actor=request.user, job=self.get_object()))

    @extend_schema(
        summary="Roll a job back: restore each device that took the change to its previous configuration",
        description="Creates and starts a rollback job (linked both ways: `rollback_of` on it, "
        "`rolled_back_by` on this job) for the devices whose delivery completed, each sent "
        "what it had before. Rolled out like the original (per-site cap, batch size, deadline) "
        "unless overridden here. 409 while the job is still running, when it was already rolled "
        "back, or when no device has a previous configuration to restore.",
        request=RollbackSerializer,
        responses={201: JobDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    @audited_atomic()
    def rollback(self, request, pk=None):
        job = self.get_object()
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rollback = services.job_rollback(actor=request.user, job=job, **serializer.validated_data)
        return self._answer(rollback, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Deliveries of a job",
        description="One row per targeted device, in keyset (cursor) pages by id.",
        parameters=[
            OpenApiParameter(
                "status", str, many=True, enum=DeliveryStatus.values, description="Only these statuses."
            )
        ],
        responses=DeliverySerializer(many=True),
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def deliveries(self, request, pk=None):
        job = self.get_object()
        filterset = DeliveryFilterSet(
            request.query_params, queryset=job_deliveries(job=job, user=request.user)
        )
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(filterset.qs, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(
        summary="Cancel one delivery of a job",
        description="A pending or sent delivery (the device has not acknowledged it) becomes "
        "`cancelled`; a device on a push channel (MQTT) that was sent the work is told to drop "
        "it. A repeat is a no-op; an acknowledged or finished delivery answers 409 "
        "(`delivery_not_cancellable`). A delivery of another job, or at a site you may not "
        "see, is a 404. The job finishes when its last open delivery is cancelled.",
        parameters=[
            OpenApiParameter(
                "delivery_id",
                int,
                OpenApiParameter.PATH,
                description="The delivery's id, as listed by `GET /jobs/<id>/deliveries`.",
            )
        ],
        request=None,
        responses=DeliverySerializer,
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"deliveries/(?P<delivery_id>[0-9]+)/cancel",
        url_name="delivery-cancel",
        filter_backends=[],
    )
    @audited_atomic()
    def cancel_delivery(self, request, pk=None, delivery_id=None):
        job = self.get_object()
        deliveries = job_deliveries(job=job, user=request.user)
        delivery = deliveries.filter(pk=delivery_id).first()
        if delivery is None:
            raise NotFound()
        services.delivery_cancel(actor=request.user, delivery=delivery)
        return Response(DeliverySerializer(deliveries.get(pk=delivery.pk)).data)

    @extend_schema(
        summary="Pre-flight numbers for a job about to be created",
        description="How many devices match, how many are online now, how many already have "
        "unfinished work, and the expected duration under the rollout policy. Creates nothing.",
        request=PreviewRequestSerializer,
        responses=PreviewSerializer,
    )
    @action(detail=False, methods=["post"], filter_backends=[])
    def preview(self, request):
        serializer = PreviewRequestSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        numbers = services.job_preview(actor=request.user, site=data.pop("site_id"), **data)
        return Response(PreviewSerializer(numbers).data)


class SegmentPermissions(ModelPermissions):
    """Saved segments are a job-targeting tool: whoever may create jobs may keep and use
    them (no separate model permission to grant). Which ones is the scoping rule's."""

    perms_map = dict.fromkeys(
        ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"), ["jobs_app.add_job"]
    )


class SegmentPagination(CursorPagination):
    ordering = "-id"


@extend_schema_view(
    list=extend_schema(
        summary="List saved segments",
        description="The saved filters you may use: those of the sites you manage and the site-less ones.",
    ),
    retrieve=extend_schema(summary="Get a saved segment"),
    create=extend_schema(
        summary="Save a segment",
        description="A named filter (`segment`, as on a job); `site_id` limits it to that site's "
        "managers, null shares it with everyone who runs a site. Create a job from it with "
        "`saved_segment=<id>`.",
    ),
    partial_update=extend_schema(summary="Change a saved segment (jobs made from it keep their copy)"),
    destroy=extend_schema(summary="Delete a saved segment (jobs made from it keep their copy)"),
)
class SavedSegmentViewSet(ServiceModelViewSet):
    """Saved device filters (`/segments/42`), to create jobs with `saved_segment=42`."""

    serializer_class = SavedSegmentSerializer
    permission_classes = [SegmentPermissions]
    pagination_class = SegmentPagination
    filter_backends = []
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return SavedSegment.objects.for_user(self.request.user).select_related("site", "owner")

    def get_object(self):
        obj = super(ServiceModelViewSet, self).get_object()
        # Seen but not changeable (a site-less segment of someone else): 403.
        writing = self.request.method not in ("GET", "HEAD", "OPTIONS")
        if (
            writing
            and not SavedSegment.objects.for_user(self.request.user, "change").filter(pk=obj.pk).exists()
        ):
            raise PermissionDenied("You may not change this saved segment.")
        return obj

    def create_object(self, data):
        return services.segment_create(actor=self.request.user, **data)

    def update_object(self, instance, data):
        return services.segment_update(actor=self.request.user, saved=instance, **data)

    def delete_object(self, instance):
        services.segment_delete(actor=self.request.user, saved=instance)

    def update(self, request, *args, **kwargs):
        if not kwargs.get("partial"):
            return self.http_method_not_allowed(request, *args, **kwargs)
        return super().update(request, *args, **kwargs)


@extend_schema_view(
    list=extend_schema(
        summary="Jobs of a device",
        description="The jobs with a delivery to this device, newest first: the same as "
        "`GET /jobs?device=<device_id>` (which takes the other filters too). A device you may "
        "not see is a 404.",
    )
)
class DeviceJobViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """`/devices/<device_id>/jobs`, an alias of `/jobs?device=<device_id>`."""

    serializer_class = JobSerializer
    pagination_class = JobPagination
    filter_backends = []

    permission_model = Job  # the model of job_list, for ModelPermissions

    def get_queryset(self):
        return job_list(user=self.request.user)

    def list(self, request, *args, **kwargs):
        device_id = kwargs.get("device_id", "")
        visible = Device.objects.for_user(request.user).filter(device_id=device_id)
        if "\x00" in device_id or not visible.exists():
            raise NotFound()
        jobs = JobFilterSet({"device": device_id}, queryset=self.get_queryset()).qs
        page = self.paginate_queryset(jobs)
        data = JobSerializer(page, many=True, context=self.get_serializer_context()).data
        return self.get_paginated_response(data)
