"""`make install` sets up exactly requirements-dev.lock: every pinned version, nothing else."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)

# Installed from the checkout itself (editable, no version pin), and the venv's own installer.
NOT_PINNED = {"audit-ingest", "audit-ingest-client", "pip"}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    return {_name(n): v for n, v in PIN.findall((ROOT / lock).read_text())}


def installed() -> dict[str, str]:
    return {_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_every_pin_is_hash_checked() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[-1].strip())
        pinned = [e for e in entries if PIN.match(e)]
        assert pinned, lock
        unhashed = [e.split()[0] for e in pinned if "--hash=sha256:" not in e]
        assert unhashed == [], f"{lock}: pinned without a hash: {unhashed}"


def test_the_environment_is_the_lock() -> None:
    locked = pins("requirements-dev.lock")
    have = {n: v for n, v in installed().items() if n not in NOT_PINNED}
    wrong = {n: (v, locked[n]) for n, v in have.items() if n in locked and locked[n] != v}
    assert wrong == {}, f"installed version != lock (installed, locked): {wrong}"
    assert sorted(set(have) - set(locked)) == [], "installed but not in the lock"
    assert sorted(set(locked) - set(have)) == [], "in the lock but not installed"


def test_the_image_runs_on_the_same_versions() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert runtime, "requirements.lock pins nothing"
    assert {n: dev.get(n) for n in runtime} == runtime
