from jobs_app.api.views import DeviceJobViewSet, JobViewSet, SavedSegmentViewSet

# (prefix, viewset, basename): homepot.api.urls mounts these at / and at /api/v1/.
resources = [
    ("jobs", JobViewSet, "job"),
    ("segments", SavedSegmentViewSet, "segment"),
    # The jobs of one device: an alias of /jobs?device=<device_id>.
    (r"devices/(?P<device_id>[^/]+)/jobs", DeviceJobViewSet, "device-job"),
]
