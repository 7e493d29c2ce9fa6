"""Production settings: `check --deploy` clean, HTTPS, cookies, session
idle timeout, no caching of patient data, a Content-Security-Policy without inline scripts,
private upload files, no hard-coded passwords in docker-compose."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from apps.cases import services as case_services
from tests.conftest import REPO_ROOT, upload_of

TEMPLATES = REPO_ROOT / "templates"


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a production deployment sets: nothing from the developer's environment."""
    unset = {"DATABASE_URL", "DEBUG", "SECRET_KEY", "CXR_PSEUDONYM_KEY", "CELERY_BROKER_URL"}
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("SECURE_")}
    env.update(
        DJANGO_SETTINGS_MODULE="cxrplatform.settings",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        CXR_PSEUDONYM_KEY=secrets.token_hex(32),
        ALLOWED_HOSTS="cxr.hospital.example",
        CXR_VAR_DIR=str(tmp_path),
    )
    env.update(extra)
    return env


def _run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=_production_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.slow
def test_check_deploy_has_no_warnings_with_the_production_environment(tmp_path):
    result = _run(tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout + result.stderr


def _settings_of(tmp_path: Path, names: list[str], **extra: str) -> dict[str, str]:
    code = "import django; django.setup(); from django.conf import settings; " + "; ".join(
        f"print({n!r}, repr(settings.{n}), sep='=')" for n in names
    )
    result = _run(tmp_path, "-c", code, **extra)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@pytest.mark.slow
def test_production_defaults_are_https_only(tmp_path):
    values = _settings_of(
        tmp_path,
        [
            "SECURE_SSL_REDIRECT",
            "SECURE_HSTS_SECONDS",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SESSION_COOKIE_SECURE",
            "CSRF_COOKIE_SECURE",
            "SECURE_PROXY_SSL_HEADER",
            "SESSION_COOKIE_AGE",
            "SESSION_SAVE_EVERY_REQUEST",
            "FILE_UPLOAD_PERMISSIONS",
            "FILE_UPLOAD_DIRECTORY_PERMISSIONS",
        ],
    )
    assert values == {
        "SECURE_SSL_REDIRECT": "True",
        "SECURE_HSTS_SECONDS": str(365 * 24 * 3600),
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
        "SESSION_COOKIE_SECURE": "True",
        "CSRF_COOKIE_SECURE": "True",
        # No proxy is trusted unless the deployment names its header.
        "SECURE_PROXY_SSL_HEADER": "None",
        "SESSION_COOKIE_AGE": "1800",
        "SESSION_SAVE_EVERY_REQUEST": "True",
        "FILE_UPLOAD_PERMISSIONS": str(0o600),
        "FILE_UPLOAD_DIRECTORY_PERMISSIONS": str(0o700),
    }


@pytest.mark.slow
def test_proxy_header_and_idle_timeout_come_from_the_environment(tmp_path):
    values = _settings_of(
        tmp_path,
        ["SECURE_PROXY_SSL_HEADER", "SESSION_COOKIE_AGE"],
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https",
        CXR_SESSION_IDLE_MINUTES="10",
    )
    assert values == {
        "SECURE_PROXY_SSL_HEADER": repr(("HTTP_X_FORWARDED_PROTO", "https")),
        "SESSION_COOKIE_AGE": "600",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("X-Forwarded-Proto", "SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto' must read"),
        ("X Forwarded: https", "SECURE_PROXY_SSL_HEADER='X Forwarded: https' must read"),
        ("X-Forwarded-Proto: ", "must read"),
    ],
)
@pytest.mark.slow
def test_a_malformed_proxy_header_is_refused_with_the_expected_form(tmp_path, value, message):
    result = _run(tmp_path, "manage.py", "check", SECURE_PROXY_SSL_HEADER=value)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
    assert "X-Forwarded-Proto: https" in result.stderr  # the example of the right form


# --- the running app (tests.settings: the production settings with DEBUG off) -------------


@pytest.mark.django_db
def test_session_ends_after_the_idle_timeout_and_each_request_extends_it(client, clinician):
    client.force_login(clinician)
    cases = reverse("cases:list")
    assert client.get(cases).status_code == 200
    session = Session.objects.get()
    idle = timedelta(minutes=30)
    assert abs(session.expire_date - (timezone.now() + idle)) < timedelta(seconds=30)
    # 25 minutes of inactivity: a request still works and starts the 30 minutes again.
    Session.objects.filter(pk=session.pk).update(expire_date=timezone.now() + timedelta(minutes=5))
    assert client.get(cases).status_code == 200
    session.refresh_from_db()
    assert session.expire_date - timezone.now() > timedelta(minutes=29)
    # Past the timeout: the session is gone, the next request goes to the log-in page.
    Session.objects.filter(pk=session.pk).update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get(cases)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.fixture
def case_with_image(clinician):
    return case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])


@pytest.mark.django_db
def test_stored_uploads_are_readable_by_the_owner_only(case_with_image, settings):
    image = case_with_image.images.get()
    path = Path(image.file.path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def _no_store(response) -> bool:
    return "no-store" in response.get("Cache-Control", "")


@pytest.mark.django_db
def test_pages_and_api_responses_with_patient_data_are_never_cached(
    client, clinician, case_with_image
):
    client.force_login(clinician)
    image = case_with_image.images.get()
    for url in (
        reverse("cases:list"),
        reverse("cases:detail", args=[case_with_image.pk]),
        reverse("cases:image-file", args=[image.pk]),
        reverse("api:case-list"),
        reverse("api:case-detail", args=[case_with_image.pk]),
        reverse("api:image-detail", args=[image.pk]),
        reverse("api:image-file", args=[image.pk]),
        "/api/v1/no-such-thing/",  # the API's 404 body
        reverse("login"),
    ):
        response = client.get(url)
        assert response.status_code in (200, 404), url
        assert _no_store(response), (url, response.get("Cache-Control"))


def _csp(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.django_db
def test_every_page_has_a_content_security_policy_without_inline_scripts(
    client, annotator, clinician, case_with_image
):
    client.force_login(clinician)
    policy = _csp(client.get(reverse("cases:detail", args=[case_with_image.pk])))
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    client.logout()
    client.force_login(annotator)
    labelling = client.get(reverse("cases:label-queue"))
    assert "script-src 'self';" in labelling["Content-Security-Policy"] + ";"
    assert "/static/js/labelling.js" in labelling.content.decode()


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
INLINE_STYLE = re.compile(r"""\sstyle\s*=\s*["']""", re.IGNORECASE)


def test_no_template_has_an_inline_script_handler_or_style():
    """The policy refuses them, so none may be left: each would silently stop working."""
    offenders = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        text = template.read_text()
        for name, pattern in (
            ("script", INLINE_SCRIPT),
            ("event handler", INLINE_HANDLER),
            ("style attribute", INLINE_STYLE),
        ):
            offenders += [
                f"{template.relative_to(REPO_ROOT)}: {name}" for _ in pattern.findall(text)
            ]
    assert offenders == []


def test_the_legend_stylesheet_gradient_matches_the_heatmap_colours():
    """The colour scale moved from a style attribute into app.css: it must stay the map's."""
    from ml.serving.colours import css_gradient

    assert css_gradient() in (REPO_ROOT / "static" / "css" / "app.css").read_text()


def test_the_api_docs_pages_load_their_scripts_from_files(client):
    for name in ("api:docs", "api:redoc"):
        response = client.get(reverse(name))
        assert response.status_code == 200
        body = response.content.decode()
        assert not INLINE_SCRIPT.search(body), name
        assert "'unsafe-inline'" not in _csp(response).get("script-src", [])


# --- docker-compose -------------------------------------------------------------------------

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_no_hard_coded_password_and_secure_cookies_by_default():
    compose = _compose()
    app_env = compose["x-app"]["environment"]
    postgres_env = compose["services"]["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${POSTGRES_PASSWORD}" in app_env["DATABASE_URL"]
    assert re.search(r"postgres://cxr:[^$]", app_env["DATABASE_URL"]) is None
    for name in ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT"):
        assert app_env[name] in (f"${{{name}:-1}}", "1"), name
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key or key.endswith("_KEY"):
                assert str(value).startswith("${"), (key, value)


def test_compose_env_file_is_generated_with_random_secrets_and_kept(tmp_path):
    env_file = tmp_path / ".env"
    script = REPO_ROOT / "deploy" / "compose_env.py"
    first = subprocess.run(
        [sys.executable, str(script), str(env_file)], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    needed = {"SECRET_KEY", "CXR_PSEUDONYM_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}
    assert needed <= set(values)
    assert len({values[name] for name in needed}) == len(needed)
    assert all(len(values[name]) >= 32 for name in needed)
    # Every variable compose requires (${NAME:?...}) is in the file.
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required <= set(values)
    # Run again: existing values (the pseudonym key above all) are never replaced.
    env_file.write_text(env_file.read_text() + "ALLOWED_HOSTS=cxr.hospital.example\n")
    again = subprocess.run(
        [sys.executable, str(script), str(env_file)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr
    kept = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert {k: kept[k] for k in values} == values
    assert kept["ALLOWED_HOSTS"] == "cxr.hospital.example"
