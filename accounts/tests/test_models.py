import pytest
from django.contrib.auth.hashers import identify_hasher
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.test import override_settings

from accounts.models import User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_email_is_unique_regardless_of_case():
    UserFactory(email="Store.Manager@Example.com")
    with pytest.raises(IntegrityError):
        UserFactory(email="store.manager@example.com")


def test_full_clean_names_the_email_clash_and_lowercases_the_address():
    UserFactory(email="anna@example.com")
    user = User(username="anna2", email="ANNA@EXAMPLE.COM")
    user.set_unusable_password()
    with pytest.raises(ValidationError) as err:
        user.full_clean()
    assert "A user with this email address already exists." in str(err.value)
    assert user.email == "anna@example.com"


def test_usernames_are_unique_regardless_of_case_and_log_in_either_way(client):
    UserFactory(username="Priya")
    assert client.login(username="PRIYA", password="correct-horse-battery")
    with pytest.raises(IntegrityError):
        UserFactory(username="priya")


@override_settings(
    PASSWORD_HASHERS=[
        "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
        "django.contrib.auth.hashers.BCryptPasswordHasher",
    ]
)
def test_passwords_are_hashed_with_bcrypt_cost_12():
    user = UserFactory()
    user.set_password("Tr1cky-Passw0rd!")
    user.save()

    hasher = identify_hasher(user.password)
    assert hasher.algorithm == "bcrypt_sha256"
    assert user.password.split("$")[3] == "12"  # bcrypt_sha256$$2b$12$...
    assert user.check_password("Tr1cky-Passw0rd!")
    assert not user.check_password("wrong")
