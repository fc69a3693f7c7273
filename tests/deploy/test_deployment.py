"""Least privilege by default in what is shipped: the compose file runs migrations as the
database's owner and the service as roles that cannot change audit rows, has no default
password, asks Redis for a password, publishes the API on loopback unless told otherwise and
the workers' metrics on the compose network only, with the token; the image's build context
leaves secrets and local state out; its dependencies are pinned with hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = re.compile(r"^\$\{[A-Z_]+:\?[^}]+\}$")  # ${NAME:?message}: no default, or no start
SECRET_NAMES = ("PASSWORD", "KEYS", "TOKEN")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose()["services"][service].get("environment", {}).items()}


def test_no_secret_has_a_default() -> None:
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if key.endswith("__FILE"):  # read from a compose secret, never a default
                assert str(value).startswith("/run/secrets/"), (name, key, value)
            elif any(part in key for part in SECRET_NAMES):
                assert REQUIRED.match(str(value)), (name, key, value)
            assert "audit:audit@" not in str(value), (name, key)


def test_the_service_runs_as_roles_that_cannot_change_audit_rows() -> None:
    owner = environment("migrate")["AUDIT_DATABASE_URL"]
    assert owner.startswith("postgresql://audit:${AUDIT_DB_OWNER_PASSWORD:?")
    assert environment("api")["AUDIT_DATABASE_URL"].startswith("postgresql://audit_api:")
    assert environment("worker")["AUDIT_DATABASE_URL"].startswith("postgresql://audit_worker:")
    mounts = compose()["services"]["postgres"]["volumes"]
    assert "./deploy/postgres-roles.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in mounts


def test_redis_wants_a_password_and_every_client_gives_it() -> None:
    command = " ".join(compose()["services"]["redis"]["command"])
    assert "requirepass" in command and "--maxmemory-policy noeviction" in command
    for service in ("api", "worker"):
        assert environment(service)["AUDIT_REDIS_URL"].startswith(
            "redis://:${AUDIT_REDIS_PASSWORD:?"
        )


def test_ports_are_on_loopback_unless_set_and_metrics_want_the_token() -> None:
    assert compose()["services"]["api"]["ports"] == [
        "${AUDIT_API_BIND:-127.0.0.1}:${AUDIT_API_PORT:-8000}:8000"
    ]
    assert "ports" not in compose()["services"]["worker"]
    for service in ("api", "worker"):
        assert REQUIRED.match(environment(service)["AUDIT_METRICS_TOKEN"])
    # Each service gets the keys it needs, and no more: the API no writer-only keys beyond
    # what verification uses, migrate only the service keys (for `keys` commands).
    assert set(environment("migrate")) == {"AUDIT_DATABASE_URL", "AUDIT_SERVICE_KEYS"}


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".data", ".env", ".git"} <= ignored


def test_the_image_installs_pinned_hashed_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9._-]+)==(\S+) \\$", lock, re.M))
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in requirements.lock"
    assert lock.count("--hash=sha256:") >= len(pinned)
    assert "/opt/" not in lock and "--index-url" not in lock  # nothing of one machine
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
