import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from cxrplatform.env import (
    env_bool,
    env_broker_url,
    env_database,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
)
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_env_bool_rejects_non_boolean_and_names_the_variable(value):
    with pytest.raises(ImproperlyConfigured, match=r"DEBUG=.* is not a boolean"):
        env_bool("DEBUG", default=False, environ={"DEBUG": value})


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("TRUE", True), ("off", False), ("", True)]
)
def test_env_bool_reads_common_spellings(value, expected):
    assert env_bool("X", default=True, environ={"X": value}) is expected


def test_env_int_rejects_text_and_out_of_range():
    with pytest.raises(ImproperlyConfigured, match="N='ten' is not an integer"):
        env_int("N", default=1, environ={"N": "ten"})
    with pytest.raises(ImproperlyConfigured, match="N=0 is below 1"):
        env_int("N", default=1, min_value=1, environ={"N": "0"})
    assert env_int("N", default=7, environ={}) == 7


def test_env_float_reads_numbers_and_rejects_text_non_finite_and_out_of_range():
    assert env_float("T", default=0.0, environ={"T": "0.05"}) == 0.05
    assert env_float("T", default=0.25, environ={}) == 0.25
    with pytest.raises(ImproperlyConfigured, match="T='a little' is not a number"):
        env_float("T", default=0.0, environ={"T": "a little"})
    with pytest.raises(ImproperlyConfigured, match="T='nan' is not finite"):
        env_float("T", default=0.0, environ={"T": "nan"})
    with pytest.raises(ImproperlyConfigured, match=r"T=1\.5 is above 1\.0"):
        env_float("T", default=0.0, max_value=1.0, environ={"T": "1.5"})


def test_env_str_without_default_requires_a_value():
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY must be set"):
        env_str("SECRET_KEY", environ={"SECRET_KEY": "  "})


def test_env_list_rejects_empty_items():
    assert env_list("H", default=[], environ={"H": "a.example, b.example"}) == [
        "a.example",
        "b.example",
    ]
    with pytest.raises(ImproperlyConfigured, match="empty item"):
        env_list("H", default=[], environ={"H": "a.example,,b.example"})


def test_env_path_must_be_absolute():
    with pytest.raises(ImproperlyConfigured, match="must be an absolute path"):
        env_path("MEDIA_ROOT", default=REPO_ROOT, environ={"MEDIA_ROOT": "relative/media"})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@localhost/db", "only PostgreSQL and SQLite are supported"),
        ("not a url", "not a database URL"),
        ("postgres://localhost", "names no database"),
    ],
)
@pytest.mark.slow
def test_env_database_rejects_unsupported_or_malformed_urls(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env_database("DATABASE_URL", default="sqlite:///x", environ={"DATABASE_URL": url})


def test_env_database_parses_postgres():
    config = env_database(
        "DATABASE_URL", default="", environ={"DATABASE_URL": "postgres://cxr@127.0.0.1:5432/cxr"}
    )
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["NAME"] == "cxr"
    assert config["PORT"] == 5432


def test_env_broker_url_rejects_unknown_transport():
    with pytest.raises(ImproperlyConfigured, match="broker must be a redis://"):
        env_broker_url("CELERY_BROKER_URL", default="", environ={"CELERY_BROKER_URL": "amqp://x"})


def _run_check(**env):
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY"}
    }
    full_env.update(env)
    full_env["DJANGO_SETTINGS_MODULE"] = "cxrplatform.settings"
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_project_refuses_to_start_with_a_bad_database_url(tmp_path):
    result = _run_check(DEBUG="1", DATABASE_URL="mysql://x@y/z", CXR_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "only PostgreSQL and SQLite are supported" in result.stderr


@pytest.mark.slow
def test_project_refuses_to_start_without_secret_key_when_debug_is_off(tmp_path):
    result = _run_check(DEBUG="0", CXR_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def _settings_env(**env) -> dict[str, str]:
    """The environment without any of the variables production must set itself."""
    unset = {"DATABASE_URL", "DEBUG", "SECRET_KEY", "CXR_PSEUDONYM_KEY"}
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env, DJANGO_SETTINGS_MODULE="cxrplatform.settings")
    return full_env


def _import_settings(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('settings loaded')"],
        cwd=REPO_ROOT,
        env=_settings_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


PRODUCTION_SECRET = "s" * 50


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "CXR_PSEUDONYM_KEY is not set"),
        ("", "CXR_PSEUDONYM_KEY is not set"),
        ("short-key", "CXR_PSEUDONYM_KEY is shorter than 32 characters"),
        (PRODUCTION_SECRET, "CXR_PSEUDONYM_KEY is the same as SECRET_KEY"),
    ],
)
@pytest.mark.slow
def test_production_requires_a_pseudonym_key_of_its_own(tmp_path, key, problem):
    env = {"DEBUG": "0", "SECRET_KEY": PRODUCTION_SECRET, "CXR_VAR_DIR": str(tmp_path)}
    if key is not None:
        env["CXR_PSEUDONYM_KEY"] = key
    result = _import_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert problem in result.stderr
    assert "when DEBUG is off" in result.stderr
    assert "openssl rand -hex 32" in result.stderr


@pytest.mark.slow
def test_production_uses_the_pseudonym_key_as_given_and_debug_has_a_default(tmp_path):
    given = "p" * 40
    code = "from django.conf import settings; print('KEY', settings.CXR_PSEUDONYM_KEY)"
    env = _settings_env(
        DEBUG="0", SECRET_KEY=PRODUCTION_SECRET, CXR_PSEUDONYM_KEY=given, CXR_VAR_DIR=str(tmp_path)
    )
    for environment, expected in (
        (env, given),
        (_settings_env(DEBUG="1", SECRET_KEY=PRODUCTION_SECRET, CXR_VAR_DIR=str(tmp_path)), None),
    ):
        result = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        key = result.stdout.split("KEY ", 1)[1].strip()
        if expected is not None:
            assert key == expected
        else:  # the embedded demo's fixed key, never one made from SECRET_KEY
            assert PRODUCTION_SECRET not in key
            assert "insecure" in key
