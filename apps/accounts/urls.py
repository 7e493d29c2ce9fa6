"""Account pages: password change and reset (every user), users and roles (site admins).

Django's auth views reverse these names without a namespace, so there is none."""

from django.contrib.auth import views as auth_views
from django.urls import path

from apps.accounts import passwords, user_views
from apps.api.throttles import LoginThrottle, throttle_posts

urlpatterns = [
    path("password/", passwords.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="registration/password_change_done.html"
        ),
        name="password_change_done",
    ),
    # Throttled per client address like the log-in: each POST may send an e-mail.
    path(
        "password/reset/",
        throttle_posts(LoginThrottle)(passwords.PasswordResetView.as_view()),
        name="password_reset",
    ),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(
            template_name="registration/password_reset_done.html"
        ),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        passwords.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="registration/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("users/", user_views.user_list, name="user-list"),
    path("users/new/", user_views.user_create, name="user-create"),
    path("users/<int:pk>/", user_views.user_detail, name="user-detail"),
]
