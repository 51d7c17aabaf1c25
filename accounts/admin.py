"""People, their site roles and their API tokens in the operator console.

Users and memberships are administered by superusers only; tokens by superusers, and by
other staff (with the token permissions) for themselves. Every write goes through
accounts.services, so it is validated and audited like the same change made in the API.
"""

import contextvars

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.utils import timezone

from accounts.models import ApiToken, SiteMembership, User
from accounts.services import (
    api_token_issue,
    api_token_revoke,
    membership_change,
    membership_grant,
    membership_revoke,
    user_create,
    user_deactivate,
    user_update,
)
from homepot.admin import (
    ServiceAdminMixin,
    ServiceRefused,
    SiteListFilter,
    SuperuserOnlyAdminMixin,
    adopt_saved,
    count_of,
    object_link,
    run_service,
    status_badge,
)

# --- Users ---------------------------------------------------------------------------------


class UniqueIdentityFormMixin:
    """Email required and, like the username, unique without regard to case; neither may
    equal another account's other one, since a login accepts either. The service
    (accounts.services) is the authority; checking here names the field at fault."""

    def _clash(self, value: str) -> bool:
        others = User.objects.filter(Q(username__iexact=value) | Q(email__iexact=value))
        if self.instance.pk is not None:
            others = others.exclude(pk=self.instance.pk)
        return others.exists()

    def clean_email(self):
        email = User.objects.normalize_email((self.cleaned_data.get("email") or "").strip()).lower()
        if email and self._clash(email):
            raise forms.ValidationError("A user with this email address already exists.")
        return email

    def clean_username(self):
        username = (self.cleaned_data.get("username") or "").strip()
        if username and self._clash(username):
            raise forms.ValidationError("A user with this username already exists.")
        return username


class UserCreationForm(UniqueIdentityFormMixin, auth_forms.AdminUserCreationForm):
    class Meta(auth_forms.AdminUserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class UserChangeForm(UniqueIdentityFormMixin, auth_forms.UserChangeForm):
    class Meta(auth_forms.UserChangeForm.Meta):
        model = User


# Who is changing a password: set around Django's password view, which builds the form
# itself, so the form's save can call the service as that admin. Per thread/task.
_password_actor = contextvars.ContextVar("homepot_password_actor", default=None)


class PasswordChangeForm(auth_forms.AdminPasswordChangeForm):
    def save(self, commit=True):
        if not self.cleaned_data["set_usable_password"]:
            # Switching password login off is not a service operation yet; Django does it.
            return super().save(commit)
        # Through the service: audited, and the user's API tokens are revoked with it.
        self.user = run_service(
            user_update,
            actor=_password_actor.get(),
            user=self.user,
            password=self.cleaned_data["password1"],
        )
        return self.user


class SiteMembershipInline(SuperuserOnlyAdminMixin, admin.TabularInline):
    model = SiteMembership
    fk_name = "user"
    fields = ("site", "role", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("site",)
    extra = 0

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("site")


# What the change form may hand to user_update (is_superuser is the service's is_admin);
# groups and permissions are Django's own and are saved with the form.
USER_FORM_TO_SERVICE = {
    "username": "username",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "is_active": "is_active",
    "is_staff": "is_staff",
    "is_superuser": "is_admin",
}


@admin.register(User)
class UserAdmin(SuperuserOnlyAdminMixin, ServiceAdminMixin, DjangoUserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = PasswordChangeForm
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "email", "usable_password", "password1", "password2"),
            },
        ),
    )
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "site_count",
        "is_active",
        "is_staff",
        "is_superuser",
        "last_login",
    )
    list_filter = ("is_active", "is_staff", "is_superuser", "groups")
    search_fields = ("username", "email", "first_name", "last_name")
    ordering = ("username",)
    list_select_related = ()  # no foreign keys; the site count is one annotated subquery
    readonly_fields = ("last_login", "date_joined")
    inlines = (SiteMembershipInline,)

    def get_queryset(self, request):
        memberships = (
            SiteMembership.objects.filter(user=OuterRef("pk"))
            .order_by()
            .values("user")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return super().get_queryset(request).annotate(site_count=Coalesce(Subquery(memberships), 0))

    @admin.display(description="sites", ordering="site_count")
    def site_count(self, user):
        return user.site_count

    # Users are deactivated, never deleted: there is no audited way to delete one, their
    # audit history keeps pointing at them, and the API refuses DELETE too. Untick "active"
    # on the change page or use the "Deactivate" action on the list.
    actions = ("deactivate_users",)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(
        description="Deactivate selected users (no login, tokens stop working)", permissions=["change"]
    )
    def deactivate_users(self, request, queryset):
        deactivated = 0
        for user in queryset.filter(is_active=True):
            try:
                run_service(user_deactivate, actor=request.user, user=user)
                deactivated += 1
            except ServiceRefused as exc:
                self.message_user(request, f"{user} was not deactivated: {exc}", messages.ERROR)
        self.message_user(request, f"Deactivated {count_of(deactivated, 'user')}.", messages.SUCCESS)

    def get_inline_instances(self, request, obj=None):
        # Like the rest of the add page, kept short: roles are granted once the user exists
        # (saving the add page opens the change page).
        return super().get_inline_instances(request, obj) if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            fields = {
                USER_FORM_TO_SERVICE[name]: form.cleaned_data[name]
                for name in form.changed_data
                if name in USER_FORM_TO_SERVICE
            }
            saved = run_service(user_update, actor=request.user, user=obj, **fields) if fields else obj
        else:
            usable = form.cleaned_data.get("set_usable_password", True)
            saved = run_service(
                user_create,
                actor=request.user,
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"] if usable else None,
            )
        adopt_saved(obj, saved)

    def save_formset(self, request, form, formset, change):
        if formset.model is not SiteMembership:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # fills new/changed/deleted_objects without writing
        actor = request.user

        def grant(membership):
            return run_service(
                membership_grant, actor=actor, user=form.instance, site=membership.site, role=membership.role
            )

        for membership in formset.deleted_objects:
            run_service(membership_revoke, actor=actor, membership=membership)
        for membership, changed in formset.changed_objects:
            if "site" in changed:  # another site is another membership
                run_service(membership_revoke, actor=actor, membership=membership)
                grant(membership)
            elif "role" in changed:
                run_service(membership_change, actor=actor, membership=membership, role=membership.role)
        for membership in formset.new_objects:
            adopt_saved(membership, grant(membership))

    def user_change_password(self, request, id, form_url=""):
        token = _password_actor.set(request.user)
        try:
            return super().user_change_password(request, id, form_url)
        except ServiceRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        finally:
            _password_actor.reset(token)


@admin.register(SiteMembership)
class SiteMembershipAdmin(SuperuserOnlyAdminMixin, ServiceAdminMixin, admin.ModelAdmin):
    list_display = ("user", "site_link", "role", "created_at")
    list_filter = ("role", SiteListFilter)
    search_fields = ("user__username", "user__email", "site__site_id", "site__name")
    ordering = ("site__site_id", "user__username")
    list_select_related = ("user", "site")
    autocomplete_fields = ("user", "site")

    def get_readonly_fields(self, request, obj=None):
        # A membership is one user on one site; only its role changes afterwards.
        return ("created_at",) if obj is None else ("user", "site", "created_at")

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, membership):
        return object_link(membership.site)

    def save_model(self, request, obj, form, change):
        if change:
            saved = run_service(membership_change, actor=request.user, membership=obj, role=obj.role)
        else:
            saved = run_service(
                membership_grant, actor=request.user, user=obj.user, site=obj.site, role=obj.role
            )
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        run_service(membership_revoke, actor=request.user, membership=obj)


# --- Permission groups ------------------------------------------------------------------------

# HOMEPOT's rights come from site roles (accounts.backends), not groups; Django's group admin
# stays for the rare hand-made grant, and like users and roles it is for superusers only (a
# group's permissions are a way to give someone rights).
admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(SuperuserOnlyAdminMixin, DjangoGroupAdmin):
    pass


# --- API tokens ----------------------------------------------------------------------------


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        unexpired = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        if self.value() == "active":
            return queryset.filter(unexpired, revoked_at__isnull=True)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True).exclude(unexpired)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


class ApiTokenIssueForm(forms.ModelForm):
    ttl_days = forms.IntegerField(
        label="valid for (days)",
        min_value=0,
        max_value=3650,
        required=False,
        initial=settings.HOMEPOT_API_TOKEN_TTL_DAYS,
        help_text="0 means the token never expires.",
    )

    class Meta:
        model = ApiToken
        fields = ("user", "name")


@admin.register(ApiToken)
class ApiTokenAdmin(ServiceAdminMixin, admin.ModelAdmin):
    """The secret is shown once, in a message, when the token is issued; only its hash is
    stored, and the hash is never displayed. Tokens are revoked, not edited."""

    list_display = (
        "token_display",
        "name",
        "user",
        "state_badge",
        "created_at",
        "expires_at",
        "last_used_at",
    )
    list_filter = (TokenStateFilter,)
    search_fields = ("name", "key_prefix", "user__username", "user__email")
    ordering = ("-created_at",)
    list_select_related = ("user",)
    actions = ("revoke_tokens",)
    add_fields = ("user", "name", "ttl_days")
    change_fields = ("user", "name", "key_prefix", "created_at", "expires_at", "last_used_at", "revoked_at")

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.change_fields

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenIssueForm
        return super().get_form(request, obj, **kwargs)

    def get_autocomplete_fields(self, request):
        # Only superusers may look users up; everyone else issues tokens to themselves.
        return ("user",) if request.user.is_superuser else ()

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="token", ordering="key_prefix")
    def token_display(self, token):
        return f"{token.key_prefix}…"

    @admin.display(description="state")
    def state_badge(self, token):
        if token.revoked_at is not None:
            return status_badge("revoked", "Revoked")
        if not token.is_usable:
            return status_badge("expired", "Expired")
        return status_badge("active", "Active")

    def save_model(self, request, obj, form, change):
        if change:  # nothing is editable on a stored token; keep Django's no-op save
            return
        token, raw_key = run_service(
            api_token_issue,
            user=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            ttl_days=form.cleaned_data.get("ttl_days"),
        )
        adopt_saved(obj, token)
        self.message_user(
            request,
            f"The new token for {token.user.get_username()} is {raw_key} — copy it now: "
            "it is stored only as a hash and will not be shown again.",
            messages.WARNING,
        )

    def has_delete_permission(self, request, obj=None):
        # Deleting would erase the record of a credential; revoking keeps it.
        return False

    @admin.action(description="Revoke selected API tokens", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        revoked = 0
        for token in queryset:
            try:
                revoked += run_service(api_token_revoke, actor=request.user, token=token)
            except ServiceRefused as exc:
                self.message_user(request, f"{token} was not revoked: {exc}", messages.ERROR)
        self.message_user(request, f"Revoked {count_of(revoked, 'API token')}.", messages.SUCCESS)
