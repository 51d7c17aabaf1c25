from django.core.exceptions import ValidationError
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


class Weekday(models.IntegerChoices):
    """ISO weekdays, as PostgreSQL's `EXTRACT(ISODOW ...)` numbers them."""

    MONDAY = 1, "Monday"
    TUESDAY = 2, "Tuesday"
    WEDNESDAY = 3, "Wednesday"
    THURSDAY = 4, "Thursday"
    FRIDAY = 5, "Friday"
    SATURDAY = 6, "Saturday"
    SUNDAY = 7, "Sunday"


class MaintenanceWindow(models.Model):
    """A weekly stretch of the site's local time when jobs that keep to maintenance windows
    may reach its devices (the store is closed or quiet). Wall-clock times in the site's
    time zone: a window that ends at or before it starts runs past midnight into the next
    day (Sat 22:00-02:00 is Saturday night); `starts == ends` is 24 hours. A site with no
    window at all may be worked on at any time (outside its blackout dates).
    See sites_app/windows.py for how an instant is judged."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="maintenance_windows")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices, help_text="The day it opens on.")
    starts = models.TimeField(help_text="Local time it opens.")
    ends = models.TimeField(help_text="Local time it closes; at or before the opening: the next day.")

    class Meta:
        ordering = ["site", "weekday", "starts", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(weekday__gte=1, weekday__lte=7), name="sites_window_weekday"
            ),
            models.UniqueConstraint(fields=["site", "weekday", "starts"], name="sites_window_unique_start"),
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.starts:%H:%M}-{self.ends:%H:%M}"

    @property
    def crosses_midnight(self) -> bool:
        return self.ends <= self.starts


# Longer than this is not a blackout but a closed store (and the next-opening search in
# sites_app/windows.py looks this far ahead).
MAX_BLACKOUT_DAYS = 92


class BlackoutPeriod(models.Model):
    """Dates (in the site's local calendar, both ends included) on which no maintenance
    window of the site opens: holidays, peak trading. A window that opened the evening
    before still runs to its end."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="blackouts")
    starts_on = models.DateField()
    ends_on = models.DateField(help_text="The last blacked-out date (included).")
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["site", "starts_on", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_on__gte=models.F("starts_on")), name="sites_blackout_ends_after_start"
            ),
        ]
        indexes = [models.Index(fields=["site", "ends_on"], name="sites_blackout_site_ends")]

    def __str__(self) -> str:
        span = str(self.starts_on)
        if self.ends_on != self.starts_on:
            span = f"{span} to {self.ends_on}"
        return f"{span} {self.reason}".strip()

    def clean(self):
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValidationError(
                {"ends_on": "The last date must be on or after the first."}, code="blackout_ends_before_start"
            )
        if self.starts_on and self.ends_on and (self.ends_on - self.starts_on).days >= MAX_BLACKOUT_DAYS:
            raise ValidationError(
                {"ends_on": f"A blackout lasts at most {MAX_BLACKOUT_DAYS} days; mark the site inactive."},
                code="blackout_too_long",
            )
