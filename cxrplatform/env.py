"""Typed readers for environment variables.

Settings come from the environment (12-factor). A typo in a deployment must
stop the process at start-up with a message that names the variable, not turn
into a silently wrong default hours later, so every helper raises
``ImproperlyConfigured`` on a value it cannot parse.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(
    name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None
) -> str:
    """A non-empty string; ``default`` when unset; error when unset without default."""
    value = _raw(name, environ)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"Environment variable {name} must be set.")
        return default
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"Environment variable {name}={value!r} is not a boolean; "
        f"use one of {sorted(_TRUE | _FALSE)}."
    )


def env_int(
    name: str,
    default: int,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None or value == "":
        result = default
    else:
        try:
            result = int(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name}={value!r} is not an integer."
            ) from None
    if min_value is not None and result < min_value:
        raise ImproperlyConfigured(f"Environment variable {name}={result} is below {min_value}.")
    if max_value is not None and result > max_value:
        raise ImproperlyConfigured(f"Environment variable {name}={result} is above {max_value}.")
    return result


def env_float(
    name: str,
    default: float,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    """A finite number; ``default`` when unset; error on text, NaN, infinity or out of range."""
    value = _raw(name, environ)
    if value is None or value == "":
        result = default
    else:
        try:
            result = float(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name}={value!r} is not a number."
            ) from None
        if not math.isfinite(result):
            raise ImproperlyConfigured(f"Environment variable {name}={value!r} is not finite.")
    if min_value is not None and result < min_value:
        raise ImproperlyConfigured(f"Environment variable {name}={result} is below {min_value}.")
    if max_value is not None and result > max_value:
        raise ImproperlyConfigured(f"Environment variable {name}={result} is above {max_value}.")
    return result


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Comma-separated list; empty items are an error (they are always a typo)."""
    value = _raw(name, environ)
    if value is None or value == "":
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(item == "" for item in items):
        raise ImproperlyConfigured(
            f"Environment variable {name}={value!r} has an empty item in its comma-separated list."
        )
    return items


def env_path(name: str, default: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ImproperlyConfigured(
            f"Environment variable {name}={value!r} must be an absolute path."
        )
    return path


def env_database(
    name: str, default: str, *, environ: Mapping[str, str] | None = None
) -> dj_database_url.DBConfig:
    """A database URL (``postgres://…`` or ``sqlite:///…``) parsed into Django's dict."""
    url = env_str(name, default, environ=environ)
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(
            f"Environment variable {name}={url!r} is not a database URL: {exc}"
        ) from None
    engine = str(config.get("ENGINE", ""))
    if engine not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
        raise ImproperlyConfigured(
            f"Environment variable {name}={url!r}: only PostgreSQL and SQLite are supported, "
            f"got {engine!r}."
        )
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"Environment variable {name}={url!r} names no database.")
    return config


def env_broker_url(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    """A Celery broker URL of a transport this platform is tested with."""
    url = env_str(name, default, environ=environ)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in {"redis", "rediss", "filesystem", "memory"}:
        raise ImproperlyConfigured(
            f"Environment variable {name}={url!r}: the broker must be a redis://, rediss:// "
            "or filesystem:// URL."
        )
    return url
