"""`python -m app witness` and `python -m app witness vkey` as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.notes import format_signer_key
from app.local.processes import clean_environment
from app.local.servers import free_port
from app.witness.config import KEY_FILE, WitnessIdentity
from tests.witness.conftest import Log

NAME = "witness.test/cli"


def environment(directory: Path, **settings: str) -> dict[str, str]:
    env = clean_environment()
    env.update({"AUDIT_WITNESS_DIR": str(directory), "AUDIT_LOG_LEVEL": "WARNING"})
    env.update({f"AUDIT_{name.upper()}": value for name, value in settings.items()})
    return env


def witness(directory: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "witness", *args],
        env=environment(directory, **settings),
        cwd=directory.parent,  # no .env
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_vkey_makes_the_key_once_and_prints_it(tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    first = witness(directory, "vkey", witness_name=NAME)
    assert first.returncode == 0, first.stderr
    vkey = first.stdout.strip()
    assert vkey.startswith(NAME + "+")
    assert (directory / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert witness(directory, "vkey").stdout.strip() == vkey  # the name comes from the key
    other = witness(directory, "vkey", witness_name="witness.test/other")
    assert other.returncode == 2 and "not 'witness.test/other'" in other.stderr

    key = Ed25519PrivateKey.generate()
    given = witness(tmp_path / "given", "vkey", witness_key=format_signer_key(NAME, key))
    assert given.stdout.strip() == WitnessIdentity(NAME, key).vkey
    unnamed = witness(tmp_path / "unnamed", "vkey")
    assert unnamed.returncode == 2 and "AUDIT_WITNESS_NAME" in unnamed.stderr


def test_witness_serves_until_sigterm(tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    assert witness(directory, witness_name=NAME).returncode == 2  # no log to witness
    log = Log.make("audit.test/log")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "witness"],
        env=environment(
            directory,
            witness_name=NAME,
            witness_port=str(port),
            witness_logs=f"{log.origin}={log.vkey.vkey}",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"witness {NAME}: vkey {NAME}+")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the witness did not start"
            time.sleep(0.1)
        # A second witness on the same directory does not start.
        second = witness(
            directory,
            witness_port=str(free_port()),
            witness_logs=f"{log.origin}={log.vkey.vkey}",
        )
        assert second.returncode != 0 and "another witness holds" in second.stderr
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down (requests in flight, then the lifespan), then re-raises the
        # signal it caught, as `serve` does: the exit is by SIGTERM, not a crash.
        assert process.wait(15) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.communicate()[1]
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
        process.communicate()
