"""GET /api/v1/fleet/summary: the health of every device of the caller's sites at once."""

from django.db.models import Count, Q
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from devices_app.models import Device
from monitoring_app.choices import AlertSeverity
from monitoring_app.models import Alert
from monitoring_app.selectors import device_timeline, site_timeline
from sites_app.api.serializers import HealthSummarySerializer
from sites_app.models import Site
from sites_app.selectors import health_counts, health_counts_per_site, health_summary

TROUBLED_SITES = 10


class ViewsSites(permissions.BasePermission):
    """A signed-in user who may view sites (any member; admins). Devices may not."""

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated) or getattr(user, "is_device", False):
            return False
        return user.has_perm("sites_app.view_site")


class TroubledSiteSerializer(HealthSummarySerializer):
    site_id = serializers.CharField()
    name = serializers.CharField()


class OpenAlertsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    critical = serializers.IntegerField()
    warning = serializers.IntegerField()
    unacknowledged = serializers.IntegerField()


class FleetSummarySerializer(HealthSummarySerializer):
    sites = serializers.IntegerField(help_text="How many sites the numbers cover.")
    sites_down = serializers.IntegerField()
    sites_in_trouble = TroubledSiteSerializer(many=True, help_text="The worst sites first (at most 10).")
    open_alerts = OpenAlertsSerializer()


def _severity_key(summary: dict) -> tuple:
    """Worst first: down before degraded, then most offline, unhealthy, degraded."""
    rank = {"down": 0, "degraded": 1, "healthy": 2}[summary["status"]]
    return (rank, -summary["offline"], -summary["unhealthy"], -summary["degraded"])


def fleet_summary(*, user) -> dict:
    """Counts over the user's sites: ONE GROUP BY over their devices (per site; the fleet
    totals are the sums), the names of the worst sites, the number of sites, and the open
    alerts. The query count does not grow with the fleet; Python handles one row per site."""
    names = list(health_counts())
    per_site = list(health_counts_per_site(Device.objects.for_user(user)))
    totals = {name: sum(row[name] for row in per_site) for name in names}
    summaries = [(row["site_id"], health_summary(row)) for row in per_site]
    troubled = sorted(
        ((site_pk, summary) for site_pk, summary in summaries if summary["status"] != "healthy"),
        key=lambda item: (_severity_key(item[1]), item[0]),
    )[:TROUBLED_SITES]
    labels = Site.objects.in_bulk([site_pk for site_pk, _ in troubled])
    alerts = (
        Alert.objects.for_user(user)
        .open()
        .aggregate(
            total=Count("pk"),
            critical=Count("pk", filter=Q(severity=AlertSeverity.CRITICAL)),
            warning=Count("pk", filter=Q(severity=AlertSeverity.WARNING)),
            unacknowledged=Count("pk", filter=Q(acknowledged_at__isnull=True)),
        )
    )
    return {
        **health_summary(totals),
        "sites": Site.objects.for_user(user).count(),
        "sites_down": sum(summary["status"] == "down" for _, summary in summaries),
        "sites_in_trouble": [
            {"site_id": labels[site_pk].site_id, "name": labels[site_pk].name, **summary}
            for site_pk, summary in troubled
        ],
        "open_alerts": alerts,
    }


class TimelineEventSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    type = serializers.ChoiceField(choices=["health", "connectivity", "alert", "job", "operator"])
    summary = serializers.CharField()


class TimelineSerializer(serializers.Serializer):
    events = TimelineEventSerializer(many=True, help_text="Newest first, at most 50.")


class DeviceTimelineView(APIView):
    """GET /api/v1/fleet/devices/{device_id}/timeline: health reports, connectivity changes,
    alerts, jobs and operator actions of one device, newest first. Another site's device is a
    404, like a missing one."""

    permission_classes = [ViewsSites]

    @extend_schema(summary="A device's timeline", responses=TimelineSerializer)
    def get(self, request, device_id):
        device = Device.objects.for_user(request.user).filter(device_id=device_id).first()
        if device is None:
            raise NotFound()
        return Response(TimelineSerializer({"events": device_timeline(device=device)}).data)


class SiteTimelineView(APIView):
    """GET /api/v1/fleet/sites/{site_id}/timeline: its devices' connectivity changes, alerts,
    jobs and operator actions, newest first. Another operator's site is a 404."""

    permission_classes = [ViewsSites]

    @extend_schema(summary="A site's timeline", responses=TimelineSerializer)
    def get(self, request, site_id):
        site = Site.objects.for_user(request.user).filter(site_id=site_id).first()
        if site is None:
            raise NotFound()
        return Response(TimelineSerializer({"events": site_timeline(site=site)}).data)


class FleetSummaryView(APIView):
    permission_classes = [ViewsSites]

    @extend_schema(
        summary="Fleet health across your sites",
        description="Online/offline and health counts of every device of the sites you may see, "
        "the sites in the most trouble, and open alerts.",
        responses=FleetSummarySerializer,
    )
    def get(self, request):
        return Response(FleetSummarySerializer(fleet_summary(user=request.user)).data)
