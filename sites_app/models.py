from django.db import models

from accounts.scoping import ScopedQuerySet
from sites_app.validators import business_id_validator, validate_timezone


class SiteQuerySet(ScopedQuerySet):
    scope_path = "pk"

    def with_device_count(self):
        # A correlated subquery per page row keeps the count cheap on a paginated list.
        from devices_app.models import Device

        counts = (
            Device.objects.filter(site=models.OuterRef("pk"))
            .order_by()
            .values("site")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        return self.annotate(device_count=models.functions.Coalesce(models.Subquery(counts), 0))


class Site(models.Model):
    """A store or restaurant of the chain."""

    site_id = models.CharField(
        "site ID",
        max_length=64,
        unique=True,
        validators=[business_id_validator],
        help_text="Business identifier, e.g. site-123. Unique across the chain.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    location = models.CharField(max_length=255, blank=True, help_text="Street address.")
    region = models.CharField(max_length=100, blank=True, db_index=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SiteQuerySet.as_manager()

    class Meta:
        ordering = ["site_id"]
        indexes = [models.Index(fields=["is_active", "site_id"], name="sites_active_site_id")]

    def __str__(self) -> str:
        return f"{self.name} ({self.site_id})"
