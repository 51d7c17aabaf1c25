"""ModelPermissions reads a view's `permission_model` instead of building its queryset:
the two must name the same model, for every action of every view that declares one."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.tests.factories import UserFactory


def _viewsets_with_permission_model():
    found, stack = {}, list(get_resolver().url_patterns)
    while stack:
        pattern = stack.pop()
        if isinstance(pattern, URLResolver):
            stack.extend(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            cls = getattr(pattern.callback, "cls", None)
            actions = getattr(pattern.callback, "actions", None) or {}
            if cls is not None and getattr(cls, "permission_model", None) is not None:
                found.setdefault(cls, set()).update(actions.values())
    return found


def test_some_views_declare_a_permission_model():
    names = {cls.__name__ for cls in _viewsets_with_permission_model()}
    assert {"JobViewSet", "DeviceViewSet"} <= names


@pytest.mark.django_db
def test_permission_model_is_the_model_of_every_actions_queryset():
    user = UserFactory(is_superuser=True)
    for cls, actions in _viewsets_with_permission_model().items():
        for action in sorted(actions):
            request = Request(APIRequestFactory().get("/"))
            request.user = user
            view = cls(action=action, request=request, kwargs={}, format_kwarg=None)
            assert view.get_queryset().model is cls.permission_model, (cls.__name__, action)
