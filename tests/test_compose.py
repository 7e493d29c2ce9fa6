"""docker-compose.yml passes the Compose Specification schema (vendored from
docker-compose 1.29.2: tests/fixtures/compose/) with the healthchecks and Flower, and
`docker compose config` / `docker-compose config` where either binary is installed
(.ci/run installs Debian's docker-compose and sets CXR_REQUIRE_COMPOSE=1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft201909Validator

from cxrplatform.celery import QUEUES
from tests.conftest import FIXTURES, REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
SCHEMA = FIXTURES / "compose" / "compose_spec.json"
_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, ${NAME}, ${NAME:-default}, ${NAME:?error}."""

    def replace(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match[1], match[2], match[3]
        value = env.get(name)
        if operator == ":?" and not value:
            raise KeyError(f"{name} is required: {argument}")
        if operator == ":-" and not value:
            return argument
        return value or ""

    return _VARIABLE.sub(replace, text)


def _secrets() -> dict[str, str]:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    return {name: f"test-{name.lower()}" for name in required}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), _secrets()))


def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(Draft201909Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_a_missing_secret_stops_compose():
    env = _secrets()
    env.pop("FLOWER_PASSWORD")
    with pytest.raises(KeyError, match="FLOWER_PASSWORD"):
        interpolate(COMPOSE.read_text(), env)


def test_web_is_healthy_when_ready(compose):
    check = compose["services"]["web"]["healthcheck"]
    assert "http://127.0.0.1:8000/readyz" in " ".join(check["test"])
    assert compose["services"]["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]


def _worker_queue_and_hostname(command: list[str]) -> tuple[str, str]:
    return command[command.index("-Q") + 1], command[command.index("--hostname") + 1]


def test_every_queue_has_a_worker_with_a_celery_ping_healthcheck(compose):
    consumed = set()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not isinstance(command, list) or "worker" not in command:
            continue
        queue, hostname = _worker_queue_and_hostname(command)
        consumed |= set(queue.split(","))
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL", name
        # Compose turns $$HOSTNAME into $HOSTNAME: the container's name, Celery's %h.
        assert (
            f"celery -A cxrplatform inspect ping -d {hostname.replace('%h', '$HOSTNAME')}"
            in (test[1])
        ), name
    assert consumed == set(QUEUES)  # a queue added to QUEUES needs its worker here


def test_flower_runs_behind_basic_auth_on_loopback_only(compose):
    flower = compose["services"]["flower"]
    assert "flower" in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:test-flower_password"
    assert flower["environment"]["FLOWER_UNAUTHENTICATED_API"] == "false"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])
    raw = yaml.safe_load(COMPOSE.read_text())
    auth = raw["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert "${FLOWER_PASSWORD:?" in auth  # never a default password


def _compose_binary() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.slow  # runs docker-compose where it is installed
def test_docker_compose_config_accepts_the_file(tmp_path: Path):
    binary = _compose_binary()
    if binary is None:
        if os.environ.get("CXR_REQUIRE_COMPOSE") == "1":
            pytest.fail("CXR_REQUIRE_COMPOSE=1 but neither `docker compose` nor docker-compose")
        pytest.skip("no docker compose binary (the schema test above still ran)")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **_secrets()}
    result = subprocess.run(
        [*binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    missing = {k: v for k, v in env.items() if k != "FLOWER_PASSWORD"}
    refused = subprocess.run(
        [*binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=tmp_path, env=missing, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "FLOWER_PASSWORD" in refused.stderr
