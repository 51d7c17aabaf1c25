"""What the accounts API accepts and shows. Rules live in accounts.services; these only
check shapes and types (a wrong JSON type is a 400 naming the field, never a guess)."""

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import build_basic_type
from drf_spectacular.types import OpenApiTypes
from rest_framework import serializers

from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from homepot.api.fields import StrictBooleanField, StrictCharField
from homepot.api.serializers import StrictModelSerializer
from sites_app.api.fields import SiteReferenceField


class TextField(StrictCharField):
    """A JSON string that PostgreSQL and the password hashers can take: DRF already refuses
    NUL characters; this also refuses unpaired surrogates (valid JSON, but not encodable)."""

    default_error_messages = {"surrogate": "Text may not contain unpaired surrogate characters."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            value.encode()
        except UnicodeEncodeError:
            self.fail("surrogate")
        return value


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (not "30", not true)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class PasswordField(TextField):
    def __init__(self, **kwargs):
        kwargs.setdefault("write_only", True)
        kwargs.setdefault("trim_whitespace", False)  # spaces are part of a password
        kwargs.setdefault("max_length", 1024)  # the validators and the hasher need no more
        kwargs.setdefault("style", {"input_type": "password"})
        super().__init__(**kwargs)


def user_summary(user: User) -> dict:
    return {"id": user.pk, "username": user.get_username(), "email": user.email, "is_admin": user.is_admin}


class UserSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    is_admin = serializers.BooleanField()


# --- auth ------------------------------------------------------------------------------


class SignupSerializer(serializers.Serializer):
    username = TextField(max_length=150, help_text="Letters, digits and @ . + - _ only.")
    email = TextField(max_length=254, help_text="Unique, compared without regard to case.")
    password = PasswordField(help_text="Checked by the server's password rules (length, commonness, ...).")
    is_admin = StrictBooleanField(
        default=False, help_text="Only an administrator may create an administrator; anyone else gets 403."
    )


class LoginSerializer(serializers.Serializer):
    username = TextField(required=False, max_length=254, help_text="Username or email address.")
    email = TextField(required=False, max_length=254, help_text="Instead of `username`.")
    password = PasswordField()

    def validate(self, attrs):
        identifier = (attrs.get("username") or attrs.get("email") or "").strip()
        if not identifier:
            raise serializers.ValidationError({"username": ["Give a username or an email address."]})
        attrs["identifier"] = identifier
        return attrs


class LoginResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The API token. Shown only now: keep it.")
    token_type = serializers.CharField(help_text='Always "Bearer": send `Authorization: Bearer <token>`.')
    token_id = serializers.IntegerField(help_text="To list or revoke it under /api/v1/auth/tokens.")
    key_prefix = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    user = UserSummarySerializer()


class SiteAccessSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site_id = serializers.CharField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=MembershipRole.choices)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    is_admin = serializers.BooleanField()
    is_staff = serializers.BooleanField(help_text="May log into the operator console (/admin/).")
    all_sites = serializers.BooleanField(help_text="True for administrators: every site, with every right.")
    sites = SiteAccessSerializer(many=True, help_text="Your sites and your role on each (empty for admins).")


# --- tokens ----------------------------------------------------------------------------


class ApiTokenSerializer(serializers.ModelSerializer):
    """A token as its owner sees it: never the secret, never its hash."""

    username = serializers.CharField(source="user.username", read_only=True)
    is_active = serializers.BooleanField(
        source="is_usable", read_only=True, help_text="Neither expired nor revoked."
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "key_prefix",
            "user",
            "username",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "is_active",
        ]
        read_only_fields = fields


class ApiTokenCreateSerializer(serializers.Serializer):
    name = TextField(max_length=100, required=False, default="", allow_blank=True)
    ttl_days = StrictIntegerField(
        required=False, min_value=1, max_value=3650, help_text="Lifetime in days (default: the server's)."
    )


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret. Shown only now: keep it.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


# --- users -----------------------------------------------------------------------------


class UserSerializer(StrictModelSerializer):
    is_admin = serializers.BooleanField(source="is_superuser", read_only=True)

    class Meta:
        model = User
        fields = [
            "id",
            "username",
            "email",
            "first_name",
            "last_name",
            "is_admin",
            "is_staff",
            "is_active",
            "date_joined",
            "last_login",
        ]
        read_only_fields = fields


class UserWriteSerializer(serializers.Serializer):
    """Create (username and email required) or change (any subset) a user."""

    username = TextField(max_length=150)
    email = TextField(max_length=254)
    password = PasswordField(required=False, help_text="Without one, the account cannot log in yet.")
    first_name = TextField(max_length=150, required=False, allow_blank=True)
    last_name = TextField(max_length=150, required=False, allow_blank=True)
    is_admin = StrictBooleanField(required=False, help_text="Administrator (sees and may change everything).")
    is_staff = StrictBooleanField(required=False, help_text="May log into the operator console.")
    is_active = StrictBooleanField(required=False, help_text="False: no login, no token works.")


# --- memberships -----------------------------------------------------------------------


class UserReferenceField(serializers.Field):
    """A user, written as their username (`"clerk"`, compared without regard to case, as
    logins are) or their internal id (`7`, a JSON number); read back as the internal id.

    The JSON type decides, so a username made of digits (`"1234"`) is still a username.
    Memberships are granted by admins only, who may name any user.
    """

    default_error_messages = {
        "invalid": "Give the user's username (a string) or internal id (a number).",
        "unknown": "Unknown user {reference!r}.",
    }

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        if isinstance(data, int):
            user = User.objects.filter(pk=data).first() if 0 < data < 2**63 else None
        else:
            user = User.objects.filter(username__iexact=data.strip()).first() if data.strip() else None
        if user is None:
            self.fail("unknown", reference=data)
        return user

    def to_representation(self, value):
        return value.pk


class UserReferenceFieldSchema(OpenApiSerializerFieldExtension):
    target_class = UserReferenceField

    def map_serializer_field(self, auto_schema, direction):
        if direction == "response":
            return build_basic_type(OpenApiTypes.INT)
        return {"oneOf": [build_basic_type(OpenApiTypes.STR), build_basic_type(OpenApiTypes.INT)]}


class MembershipSerializer(StrictModelSerializer):
    """A user's role on a site. `user` may be given as username or internal id, `site` as
    business id or internal id; both are answered as internal ids, beside `username` and
    `site_id`."""

    user = UserReferenceField()
    site = SiteReferenceField(scope_action="view")  # memberships are granted by admins
    username = serializers.CharField(source="user.username", read_only=True)
    site_id = serializers.CharField(source="site.site_id", read_only=True)
    site_name = serializers.CharField(source="site.name", read_only=True)
    role = serializers.ChoiceField(choices=MembershipRole.choices)

    class Meta:
        model = SiteMembership
        fields = ["id", "user", "username", "site", "site_id", "site_name", "role", "created_at"]
        read_only_fields = ["id", "created_at"]
        # The service answers a second role on the same site (409 naming `site`).
        validators = []


class MembershipChangeSerializer(serializers.Serializer):
    """Only the role of a membership changes; a different user or site is a new membership."""

    role = serializers.ChoiceField(choices=MembershipRole.choices)

    def validate(self, attrs):
        fixed = [name for name in ("user", "site") if name in self.initial_data]
        if fixed:
            raise serializers.ValidationError(
                {name: ["Cannot change; revoke this membership and grant a new one."] for name in fixed}
            )
        return attrs
