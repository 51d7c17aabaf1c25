"""Buttons on a change page that do one thing to that object, each behind a confirmation page.

Django's admin actions work on a changelist selection; a store manager looking at one
terminal wants "restart it" on the terminal's own page. An `ObjectActionsMixin` admin
declares `object_actions` (ObjectAction rows); each gets the URL
`<object_id>/actions/<name>/`: GET shows what will happen and a button, POST does it by
calling the action's `run`, which calls a service (scoped, audited), and returns to the
change page with the outcome as a message. The object comes from the admin's scoped
queryset, so another site's object is "not found", exactly as on its change page.

The change page gets `object_actions` (the ones the user may run on this object, with their
URLs) in its context; the app's change_form template shows them as object tools.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from homepot.admin import ServiceRefused


@dataclass(frozen=True)
class ObjectAction:
    name: str  # the URL segment
    label: str  # the button on the change page
    explanation: str  # what the confirmation page says will happen
    run: Callable  # run(model_admin, request, obj) -> message (str); raises ServiceRefused
    allowed: Callable  # allowed(model_admin, request, obj) -> bool
    confirm: str = "Yes, do it"
    danger: bool = False  # a destructive button is styled as such


class ObjectActionsMixin:
    object_actions: tuple[ObjectAction, ...] = ()
    object_action_template = "admin/object_action_confirmation.html"

    def get_urls(self):
        opts = self.model._meta
        return [
            path(
                "<path:object_id>/actions/<slug:action>/",
                self.admin_site.admin_view(self.object_action_view),
                name=f"{opts.app_label}_{opts.model_name}_object_action",
            ),
            *super().get_urls(),
        ]

    def object_action_url(self, obj, action: ObjectAction) -> str:
        opts = self.model._meta
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_object_action",
            args=[obj.pk, action.name],
            current_app=self.admin_site.name,
        )

    def allowed_object_actions(self, request, obj) -> list[dict]:
        return [
            {"label": action.label, "url": self.object_action_url(obj, action), "danger": action.danger}
            for action in self.object_actions
            if action.allowed(self, request, obj)
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        obj = self.get_object(request, unquote(object_id))
        if obj is not None:
            extra_context["object_actions"] = self.allowed_object_actions(request, obj)
        return super().change_view(request, object_id, form_url, extra_context)

    def object_action_view(self, request, object_id, action):
        spec = next((a for a in self.object_actions if a.name == action), None)
        obj = self.get_object(request, unquote(object_id))
        if spec is None or obj is None:
            raise Http404
        if not spec.allowed(self, request, obj):
            raise PermissionDenied
        change_url = reverse(
            f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change",
            args=[obj.pk],
            current_app=self.admin_site.name,
        )
        if request.method == "POST":
            try:
                outcome = spec.run(self, request, obj)
            except ServiceRefused as exc:
                self.message_user(request, f"{spec.label}: {exc}", messages.ERROR)
            else:
                self.message_user(request, outcome, messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "action": spec,
            "title": f"{spec.label}: {obj}",
            "change_url": change_url,
        }
        return TemplateResponse(request, self.object_action_template, context)
