"""The base viewset of the HOMEPOT API: scoped reads, writes through services."""

from rest_framework import permissions, viewsets
from rest_framework.exceptions import NotFound

from accounts.scoping import require_site_access
from homepot.api.filters import API_FILTER_BACKENDS
from homepot.api.schema import HomepotAutoSchema
from monitoring_app.services import audited_atomic


class ServiceModelViewSet(viewsets.ModelViewSet):
    """CRUD whose reads go through a selector and whose writes go through services.

    Subclasses set `get_queryset` (a selector already scoped with `for_user`) and implement
    `create_object`, `update_object`, `delete_object` (each calls one service with
    `actor=request.user`) and `site_of` (the site an object belongs to).

    Scoping, in order: an object outside the user's `view` scope is a 404 (its existence
    is not revealed); one they may see but not `change` is a 403 before the body is read;
    the service re-checks both sites when a write moves an object.
    """

    filter_backends = API_FILTER_BACKENDS
    lookup_value_regex = "[^/]+"
    schema = HomepotAutoSchema()

    def create_object(self, data: dict):
        raise NotImplementedError

    def update_object(self, instance, data: dict):
        raise NotImplementedError

    def delete_object(self, instance) -> None:
        raise NotImplementedError

    def site_of(self, instance):
        raise NotImplementedError

    def get_object(self):
        # PostgreSQL text cannot hold NUL, so such an id names nothing (and must not reach
        # the database, which would refuse the query outright).
        if "\x00" in self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""):
            raise NotFound()
        obj = super().get_object()
        if self.request.method not in permissions.SAFE_METHODS:
            require_site_access(self.request.user, self.site_of(obj), "change")
        return obj

    def _fresh(self, obj):
        # Re-read through the selector so the answer carries what a GET would (annotations
        # such as a site's device count, the related site's names).
        return self.get_queryset().get(pk=obj.pk)

    def perform_create(self, serializer):
        serializer.instance = self._fresh(self.create_object(serializer.validated_data))

    def perform_update(self, serializer):
        serializer.instance = self._fresh(self.update_object(serializer.instance, serializer.validated_data))

    def perform_destroy(self, instance):
        self.delete_object(instance)

    # One transaction per write request: the service's change, its audit row and the answer
    # built from them succeed together or leave nothing behind. Audited, so the audit rows
    # join the chain at the very end, after the answer is built: the chain lock, which every
    # audited write in the fleet queues for, is held only for the insert and the commit.
    @audited_atomic()
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)

    @audited_atomic()
    def update(self, request, *args, **kwargs):
        return super().update(request, *args, **kwargs)

    @audited_atomic()
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)


def csv_import_response(request, importer, serializer_class):
    """Run a CSV import for an API request: the file from a multipart `file` or a `text/csv`
    body, `?dry_run=` (default true: preview only). Answers the preview (or the applied
    summary) through `serializer_class`; any row error answers 400 with the preview in
    `preview`, nothing written. `importer(actor=, data=, dry_run=)` is the service."""
    from django.conf import settings
    from django.core.exceptions import ValidationError as DjangoValidationError
    from rest_framework import status
    from rest_framework.exceptions import ValidationError
    from rest_framework.response import Response

    from homepot.api.filters import StrictBooleanFormField
    from homepot.api.parsers import PayloadTooLarge
    from homepot.csv_import import ImportRefused

    try:
        dry_run = StrictBooleanFormField(required=False).clean(request.query_params.get("dry_run"))
    except DjangoValidationError as exc:
        raise ValidationError({"dry_run": ["Use true or false."]}) from exc
    data = request.data
    if not isinstance(data, bytes):
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError({"file": ["Send the CSV as a multipart field `file` or a text/csv body."]})
        limit = settings.HOMEPOT_IMPORT_MAX_BYTES
        if upload.size > limit:
            raise PayloadTooLarge(f"The CSV file exceeds the limit of {limit} bytes.")
        data = upload.read()
    try:
        preview = importer(actor=request.user, data=data, dry_run=dry_run is not False)
    except ImportRefused as exc:
        message = str(exc)
        error = {"status": 400, "code": "import_rejected", "message": message, "fields": {"file": [message]}}
        body = {"error": error, "preview": exc.preview.as_dict()}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return Response(serializer_class(preview.as_dict()).data)


def csv_import_schema(what: str, columns: str, serializer_class, extra: str = ""):
    """The OpenAPI description of an import action (see csv_import_response)."""
    from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

    return extend_schema(
        summary=f"Import {what} from CSV (preview, then apply)",
        description=f"The CSV the export produces ({columns}; read-only columns are ignored), as a "
        "multipart field `file` or a `text/csv` body. `dry_run=true` (the default) answers what would "
        "be created, updated and skipped, and every row's errors, writing nothing; `dry_run=false` "
        f"applies the file, all rows or none, audited as one `{what}.imported` event. Any row error "
        f"answers 400 with the preview (`preview.errors`) and writes nothing. {extra}",
        parameters=[OpenApiParameter("dry_run", bool, default=True, description="Preview only (default).")],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            },
            "text/csv": {"type": "string"},
        },
        responses={
            200: serializer_class,
            400: OpenApiResponse(description="Row errors (`preview.errors`); nothing written."),
        },
        filters=False,
    )
