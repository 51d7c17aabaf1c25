from devices_app.api.views import DeviceViewSet

# (prefix, viewset, basename): homepot.api.urls mounts these at / and at /api/v1/.
resources = [("devices", DeviceViewSet, "device")]
