"""Forms of the accounts app that are not a model's admin form."""

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm

from accounts import services, throttling


class GuardedAdminLoginForm(AdminAuthenticationForm):
    """The admin's login page, through the same login rule as the API
    (accounts.services.user_session_login_check): the same per-address and per-account
    limits on the same Redis counters, and the same user.login / user.login_failed audit
    rows (with the source address). Over a limit the page says how long to wait and does
    not check the password at all, so a guess that happens to be right is refused too."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many login attempts. Try again in %(wait)s seconds.",
        "unavailable": "Sign-in is briefly unavailable; try again in a minute.",
    }

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return self.cleaned_data
        try:
            self.user_cache = services.user_session_login_check(
                request=self.request, identifier=username, password=password, staff_only=True
            )
        except throttling.TooManyAttempts as exc:
            raise forms.ValidationError(
                self.error_messages["throttled"], code="throttled", params={"wait": exc.wait}
            ) from None
        except throttling.ThrottleUnavailable:
            raise forms.ValidationError(self.error_messages["unavailable"], code="unavailable") from None
        except services.InvalidCredentials:
            raise self.get_invalid_login_error() from None
        return self.cleaned_data
