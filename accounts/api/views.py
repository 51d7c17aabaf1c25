"""The accounts API: signup, login, logout, who am I, tokens, and (admins) users and
memberships. Views check shapes, apply rate limits and call one service each."""

import django_filters
from django.contrib.auth import logout as session_logout
from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import ListCreateAPIView, RetrieveDestroyAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services, throttling
from accounts.api import serializers as s
from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from homepot.api.filters import API_FILTER_BACKENDS, StrictBooleanFilter
from homepot.api.pagination import PageNumberPagination
from homepot.api.schema import HomepotAutoSchema


class IsAdministrator(permissions.BasePermission):
    """Admins only (superusers). `is_staff` alone is a store manager using the console."""

    message = "Only administrators may manage users and site memberships."

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated):
            raise exceptions.NotAuthenticated()
        return bool(user.is_active and user.is_superuser)


def _me(user: User) -> dict:
    return {
        **s.user_summary(user),
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_staff": user.is_staff,
        **selectors.user_site_access(user),
    }


class AccountsView(APIView):
    schema = HomepotAutoSchema()


# --- auth ------------------------------------------------------------------------------


class SignupView(AccountsView):
    """Open signup (when enabled), and the same door for admins creating accounts."""

    permission_classes = [permissions.AllowAny]

    @extend_schema(
        summary="Create an account",
        description="Open to everyone while HOMEPOT_ACCOUNTS_OPEN_SIGNUP is on; otherwise admins only. "
        "`is_admin: true` needs an administrator's token (anyone else: 403, nothing created). "
        "Rate-limited per client address and per account (429 with Retry-After).",
        request=s.SignupSerializer,
        responses={201: s.UserSummarySerializer, 429: OpenApiResponse(description="Too many attempts.")},
    )
    def post(self, request):
        serializer = s.SignupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        throttling.enforce_signup(request, username=data["username"], email=data["email"])
        user = services.user_signup(actor=request.user, **data)
        return Response(s.user_summary(user), status=status.HTTP_201_CREATED)


class LoginView(AccountsView):
    # The credentials are in the body; a stale Authorization header must not stand in the way.
    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        summary="Log in and get an API token",
        description="`username` may be the username or the email address (or send `email`). "
        "Each login issues a new token, shown once. Wrong credentials and inactive accounts "
        "both answer 401 'Invalid credentials'. Rate-limited per client address and per "
        "account (429 with Retry-After).",
        request=s.LoginSerializer,
        responses={200: s.LoginResponseSerializer, 429: OpenApiResponse(description="Too many attempts.")},
    )
    def post(self, request):
        serializer = s.LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        identifier = serializer.validated_data["identifier"]
        # The limits and the failure audit are the service's: the same rule at every door.
        user, token, raw_key = services.user_login(
            request=request, identifier=identifier, password=serializer.validated_data["password"]
        )
        return Response(
            {
                "token": raw_key,
                "token_type": "Bearer",
                "token_id": token.pk,
                "key_prefix": token.key_prefix,
                "expires_at": token.expires_at,
                "user": s.user_summary(user),
            }
        )


class LogoutView(AccountsView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="Log out: revoke the token of this request",
        description="With a session instead of a token, ends the session.",
        request=None,
        responses={204: None},
    )
    def post(self, request):
        if isinstance(request.auth, ApiToken):
            services.api_token_revoke(actor=request.user, token=request.auth, reason="revoked at logout")
        else:
            session_logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(AccountsView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(summary="Who am I, and which sites may I reach", responses={200: s.MeSerializer})
    def get(self, request):
        return Response(_me(request.user))


# --- tokens ----------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="List API tokens",
        description="Your tokens, newest first (never their secrets). Admins may pass `?user=<id>`.",
        parameters=[OpenApiParameter("user", int, description="Another user's id (admins only).")],
    ),
    post=extend_schema(
        summary="Issue a named API token (for an integration)",
        request=s.ApiTokenCreateSerializer,
        responses={201: s.ApiTokenCreatedSerializer},
    ),
)
class TokenListView(ListCreateAPIView):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.ApiTokenSerializer
    pagination_class = PageNumberPagination
    filter_backends = []
    schema = HomepotAutoSchema()

    def _owner(self) -> User | None:
        raw = self.request.query_params.get("user")
        if raw in (None, ""):
            return None
        if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**63 - 1:
            raise exceptions.ValidationError({"user": ["Give a user id (a number)."]})
        if int(raw) == self.request.user.pk:
            return self.request.user
        if not self.request.user.is_superuser:
            raise exceptions.PermissionDenied("Only administrators may list other users' tokens.")
        owner = User.objects.filter(pk=int(raw)).first()
        if owner is None:
            raise exceptions.ValidationError({"user": [f"Unknown user {raw}."]})
        return owner

    def get_queryset(self):
        return selectors.api_token_list(actor=self.request.user, user=self._owner()).select_related("user")

    def create(self, request, *args, **kwargs):
        serializer = s.ApiTokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, raw_key = services.api_token_issue(user=request.user, **serializer.validated_data)
        token.token = raw_key
        return Response(s.ApiTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(summary="Get one of your API tokens"),
    delete=extend_schema(
        summary="Revoke an API token",
        description="Its owner or an admin; anyone else gets 404. Revoking twice is harmless.",
    ),
)
class TokenDetailView(RetrieveDestroyAPIView):
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = s.ApiTokenSerializer
    schema = HomepotAutoSchema()

    def get_object(self):
        try:
            return selectors.api_token_for_actor(actor=self.request.user, pk=self.kwargs["pk"])
        except ApiToken.DoesNotExist:
            raise exceptions.NotFound("No such token.") from None

    def perform_destroy(self, instance):
        services.api_token_revoke(actor=self.request.user, token=instance)


# --- users (admins) --------------------------------------------------------------------


class UserFilterSet(django_filters.FilterSet):
    is_active = StrictBooleanFilter()
    is_admin = StrictBooleanFilter(field_name="is_superuser")
    is_staff = StrictBooleanFilter()
    site = django_filters.CharFilter(method="filter_site", help_text="Members of this site (id or site_id).")

    class Meta:
        model = User
        fields = ["is_active", "is_admin", "is_staff", "site"]

    def filter_site(self, queryset, name, value):
        memberships = SiteMembership.objects.filter(Q(site__site_id=value) | Q(site__pk=_int_or_none(value)))
        return queryset.filter(pk__in=memberships.values("user_id"))


def _int_or_none(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and int(value) <= 2**63 - 1 else None


@extend_schema_view(
    list=extend_schema(summary="List users (admins)"),
    retrieve=extend_schema(summary="Get a user (admins)"),
    create=extend_schema(summary="Create a user (admins)", request=s.UserWriteSerializer),
    update=extend_schema(summary="Change a user (admins)", request=s.UserWriteSerializer),
    partial_update=extend_schema(
        summary="Change some of a user's fields (admins)", request=s.UserWriteSerializer
    ),
    deactivate=extend_schema(
        summary="Deactivate a user (admins)",
        description="No login, and every token stops working. History stays.",
        request=None,
    ),
    activate=extend_schema(summary="Reactivate a user (admins)", request=None),
)
class UserViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Users are deactivated, never deleted: their audit history keeps pointing at them."""

    permission_classes = [IsAdministrator]
    lookup_value_regex = "[0-9]{1,18}"
    serializer_class = s.UserSerializer
    pagination_class = PageNumberPagination
    filter_backends = API_FILTER_BACKENDS
    filterset_class = UserFilterSet
    search_fields = ["username", "email", "first_name", "last_name"]
    ordering_fields = ["username", "email", "date_joined", "last_login"]
    ordering = ["username"]
    ordering_tiebreaker = "pk"
    schema = HomepotAutoSchema()

    def get_queryset(self):
        return selectors.user_list(actor=self.request.user)

    def create(self, request, *args, **kwargs):
        serializer = s.UserWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_create(actor=request.user, **serializer.validated_data)
        return Response(s.UserSerializer(user).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        user = self.get_object()
        serializer = s.UserWriteSerializer(data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        user = services.user_update(actor=request.user, user=user, **serializer.validated_data)
        return Response(s.UserSerializer(user).data)

    @action(detail=True, methods=["post"])
    def deactivate(self, request, pk=None):
        user = services.user_deactivate(actor=request.user, user=self.get_object())
        return Response(s.UserSerializer(user).data)

    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        user = services.user_update(actor=request.user, user=self.get_object(), is_active=True)
        return Response(s.UserSerializer(user).data)


# --- memberships (admins) --------------------------------------------------------------


class MembershipFilterSet(django_filters.FilterSet):
    user = django_filters.CharFilter(method="filter_user", help_text="The user's id or username.")
    site = django_filters.CharFilter(method="filter_site", help_text="The site's id or site_id.")
    role = django_filters.ChoiceFilter(choices=MembershipRole.choices)

    class Meta:
        model = SiteMembership
        fields = ["user", "site", "role"]

    def filter_site(self, queryset, name, value):
        return queryset.filter(Q(site__site_id=value) | Q(site__pk=_int_or_none(value)))

    def filter_user(self, queryset, name, value):
        # A query string has no types: a value is matched as username and as id.
        return queryset.filter(Q(user__username__iexact=value) | Q(user__pk=_int_or_none(value)))


@extend_schema_view(
    list=extend_schema(summary="List site memberships (admins)"),
    retrieve=extend_schema(summary="Get a site membership (admins)"),
    create=extend_schema(summary="Grant a user a role on a site (admins)"),
    update=extend_schema(summary="Change a membership's role (admins)", request=s.MembershipChangeSerializer),
    partial_update=extend_schema(
        summary="Change a membership's role (admins)", request=s.MembershipChangeSerializer
    ),
    destroy=extend_schema(summary="Revoke a user's role on a site (admins)"),
)
class MembershipViewSet(viewsets.ModelViewSet):
    permission_classes = [IsAdministrator]
    lookup_value_regex = "[0-9]{1,18}"
    serializer_class = s.MembershipSerializer
    pagination_class = PageNumberPagination
    filter_backends = API_FILTER_BACKENDS
    filterset_class = MembershipFilterSet
    search_fields = ["user__username", "user__email", "site__site_id", "site__name"]
    ordering_fields = ["created_at", "role"]
    ordering = ["site__site_id", "user__username"]
    ordering_tiebreaker = "pk"
    schema = HomepotAutoSchema()

    def get_queryset(self):
        return selectors.membership_list(actor=self.request.user)

    def perform_create(self, serializer):
        serializer.instance = services.membership_grant(actor=self.request.user, **serializer.validated_data)

    def update(self, request, *args, **kwargs):
        membership = self.get_object()
        serializer = s.MembershipChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.membership_change(
            actor=request.user, membership=membership, role=serializer.validated_data["role"]
        )
        return Response(s.MembershipSerializer(membership).data)

    def perform_destroy(self, instance):
        services.membership_revoke(actor=self.request.user, membership=instance)
