"""/api/v1/auth/..., /api/v1/users, /api/v1/memberships (mounted by homepot.urls).

Every path answers as the guide writes it (`/api/v1/auth/signup`, the documented one) and
with a trailing slash; neither redirects, so a POST keeps its body.
"""

from django.urls import path

from accounts.api import views
from homepot.api.routers import resource_urls, undocumented

app_name = "accounts-api"


def _both(route: str, view, name: str) -> list:
    return [
        path(route, view.as_view(), name=name),
        path(f"{route}/", undocumented(view).as_view()),
    ]


urlpatterns = [
    *_both("auth/signup", views.SignupView, "signup"),
    *_both("auth/login", views.LoginView, "login"),
    *_both("auth/logout", views.LogoutView, "logout"),
    *_both("auth/me", views.MeView, "me"),
    *_both("auth/tokens", views.TokenListView, "token-list"),
    *_both("auth/tokens/<int:pk>", views.TokenDetailView, "token-detail"),
    *resource_urls(
        [("users", views.UserViewSet, "user"), ("memberships", views.MembershipViewSet, "membership")]
    ),
]
