"""The API's resources, mounted by homepot.urls at / (the guide's paths) and at /api/v1/."""

from devices_app.api.urls import resources as device_resources
from homepot.api.routers import resource_urls
from jobs_app.api.urls import resources as job_resources
from sites_app.api.urls import resources as site_resources

RESOURCES = [*site_resources, *device_resources, *job_resources]

# The guide's paths (/sites, /devices): the ones the OpenAPI schema documents.
urlpatterns = resource_urls(RESOURCES)

# /api/v1/sites, /api/v1/devices: the same views, not documented a second time.
v1_urlpatterns = resource_urls(RESOURCES, documented=False)
