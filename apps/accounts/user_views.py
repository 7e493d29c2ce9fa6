"""The users and roles pages (site admins): list, create or invite, change roles,
deactivate and reactivate. Thin: the services are ``apps.accounts.users``."""

from __future__ import annotations

from smtplib import SMTPException

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts import users
from apps.accounts.models import PasswordChangeRequired
from apps.accounts.roles import ROLES, SITE_ADMIN, role_required

ROLE_CHOICES = [(role, role.replace("_", " ").capitalize()) for role in ROLES]


class RolesForm(forms.Form):
    roles = forms.MultipleChoiceField(
        choices=ROLE_CHOICES, required=False, widget=forms.CheckboxSelectMultiple
    )


class UserCreateForm(RolesForm):
    username = forms.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField(required=False, help_text="Where the invitation goes.")
    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Optional. Empty: the user is e-mailed a link to choose a password. "
        "Given: they must change it at their first log-in.",
    )
    field_order = ["username", "first_name", "last_name", "email", "roles", "password"]

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise ValidationError("A user with this username exists already.")
        return username

    def clean(self) -> dict:
        data = super().clean() or {}
        password = data.get("password") or ""
        if not password and not data.get("email"):
            raise ValidationError("Give an e-mail address for the invitation, or a password.")
        if password:
            candidate = get_user_model()(
                username=data.get("username", ""),
                email=data.get("email", ""),
                first_name=data.get("first_name", ""),
                last_name=data.get("last_name", ""),
            )
            try:
                password_validation.validate_password(password, user=candidate)
            except ValidationError as exc:
                self.add_error("password", exc)
        return data


def _users(actor):
    """The accounts ``actor`` manages (their site's; every site's for a superuser)."""
    from apps.sites.services import manageable_users

    return (
        manageable_users(actor)
        .order_by("username")
        .prefetch_related(Prefetch("groups"))
        .select_related("password_change_required", "site_membership__site")
    )


@require_GET
@role_required(SITE_ADMIN)
def user_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for user in _users(request.user):
        try:
            must_change = user.password_change_required is not None
        except PasswordChangeRequired.DoesNotExist:
            must_change = False
        rows.append(
            {
                "user": user,
                "roles": ["every role (superuser)"] if user.is_superuser else users.roles_of(user),
                "invited": not user.has_usable_password(),
                "must_change": must_change,
            }
        )
    return render(request, "accounts/user_list.html", {"rows": rows})


@require_http_methods(["GET", "POST"])
@role_required(SITE_ADMIN)
def user_create(request: HttpRequest) -> HttpResponse:
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = users.create_user(
                request=request,
                actor=request.user,
                username=data["username"],
                email=data["email"],
                first_name=data["first_name"],
                last_name=data["last_name"],
                roles=data["roles"],
                password=data["password"],
            )
        except (SMTPException, OSError) as exc:
            form.add_error(None, f"The invitation could not be sent ({exc}); nothing was created.")
        else:
            if data["password"]:
                messages.success(request, f"{user.username} was created.")
            else:
                messages.success(request, f"{user.username} was invited ({user.email}).")
            return redirect("user-detail", pk=user.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "accounts/user_create.html", {"form": form}, status=status)


@require_http_methods(["GET", "POST"])
@role_required(SITE_ADMIN)
def user_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = get_object_or_404(_users(request.user), pk=pk)
    form = RolesForm(initial={"roles": users.roles_of(user)})
    status = 200
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "roles":
                form = RolesForm(request.POST)
                if form.is_valid():
                    changed = users.set_roles(
                        actor=request.user, user=user, roles=form.cleaned_data["roles"]
                    )
                    messages.success(request, "Roles saved." if changed else "No change.")
                    return redirect("user-detail", pk=user.pk)
                status = 400
            elif action in {"deactivate", "reactivate"}:
                users.set_active(actor=request.user, user=user, active=action == "reactivate")
                messages.success(request, f"{user.username} was {action}d.")
                return redirect("user-detail", pk=user.pk)
            elif action == "invite":
                users.send_invitation(request=request, actor=request.user, user=user)
                messages.success(request, f"An invitation was sent to {user.email}.")
                return redirect("user-detail", pk=user.pk)
            else:
                status = 400
                messages.error(request, "Unknown action.")
        except PermissionDenied as exc:
            messages.error(request, str(exc))
            status = 403
        except (ValueError, SMTPException, OSError) as exc:
            messages.error(request, str(exc))
            status = 400
    context = {
        "subject": user,
        "form": form,
        "roles": users.roles_of(user),
        "invited": not user.has_usable_password(),
        "is_self": user.pk == request.user.pk,
    }
    return render(request, "accounts/user_detail.html", context, status=status)
