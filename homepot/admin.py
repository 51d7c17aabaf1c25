"""The HOMEPOT operator console: Django's admin, branded and grouped for store operations."""

from django.contrib import admin

# The order a store manager thinks in; anything else follows alphabetically.
APP_ORDER = ["sites_app", "devices_app", "jobs_app", "monitoring_app", "accounts"]


class HomepotAdminSite(admin.AdminSite):
    site_header = "HOMEPOT operator console"
    site_title = "HOMEPOT"
    index_title = "Your chain at a glance"

    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        rank = {label: i for i, label in enumerate(APP_ORDER)}
        return sorted(app_list, key=lambda app: (rank.get(app["app_label"], len(rank)), app["name"]))
