"""/api/v1/fleet/... (mounted by homepot.urls)."""

from django.urls import re_path

from monitoring_app.api.fleet import DeviceTimelineView, FleetSummaryView, SiteTimelineView

# Business ids never contain "/" or NUL (sites_app.validators.business_id_validator).
_ID = r"(?P<{}>[A-Za-z0-9._-]{{1,64}})"

urlpatterns = [
    re_path(r"^summary/?$", FleetSummaryView.as_view(), name="fleet-summary"),
    re_path(
        rf"^devices/{_ID.format('device_id')}/timeline/?$",
        DeviceTimelineView.as_view(),
        name="device-timeline",
    ),
    re_path(rf"^sites/{_ID.format('site_id')}/timeline/?$", SiteTimelineView.as_view(), name="site-timeline"),
]
