"""`python -m app dev`'s helpers: the demo set names the people the walk-throughs ask about,
and `dev env` gives a shell the setup `make run` started, or says to start it first."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from app.cli.seed import DEMO_PRINCIPALS, EventMaker, SeedPlan
from app.local.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_set_names_the_walk_throughs_people() -> None:
    plan = SeedPlan(
        events=3000,
        principals_per_org=len(DEMO_PRINCIPALS),
        org_names=("demo",),
        demo_people=True,
    )
    maker = EventMaker(plan, 1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [maker.record(start + timedelta(minutes=i)) for i in range(3000)]
    assert {r["organization_id"] for r in records} == {"demo"}
    assert {r["principal_id"] for r in records} == set(DEMO_PRINCIPALS)
    patients = Counter(r["patient_id"] for r in records if r["patient_id"])
    assert set(patients) == {f"p-{n}" for n in range(100, 150)}
    assert patients["p-123"] > 20
    assert any(r["principal_id"] == "dr.smith" and r["patient_id"] == "p-123" for r in records)
    assert any(r["break_glass"] for r in records)
    types = {r["principal_id"]: r["principal_type"] for r in records}
    assert types["svc-lab-interface"] == "service" and types["dr.smith"] == "user"


SHOW = 'echo "$AUDIT_DATABASE_URL|$AUDIT_KEY|$API"; command -v python'


def _dev_env(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "app", "dev", "env"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_env_exports_what_make_run_started(tmp_path: Path) -> None:
    before = _dev_env(tmp_path)
    assert before.returncode == 2 and "make run" in before.stderr and before.stdout == ""
    data = tmp_path / ".data"
    data.mkdir()
    (data / "dev-env.json").write_text(
        json.dumps(
            {
                "AUDIT_DATABASE_URL": "postgresql://u@/audit?host=/tmp/it's here",
                "AUDIT_REDIS_URL": "redis://:secret@127.0.0.1:6390/0",
                "AUDIT_SIGNING_KEYS": "dev-signing-1:c2lnbg==",
                "API": "http://127.0.0.1:8000",
            }
        )
    )
    (data / "dev-api-key").write_text("aik_example\n")
    printed = _dev_env(tmp_path)
    assert printed.returncode == 0, printed.stderr
    shell = subprocess.run(
        [
            "bash",
            "-c",
            printed.stdout + 'echo "$AUDIT_DATABASE_URL|$AUDIT_KEY|$API"; command -v python',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    url, key, api = shell.stdout.splitlines()[0].split("|")
    assert url == "postgresql://u@/audit?host=/tmp/it's here"  # quoted for the shell
    assert (key, api) == ("aik_example", "http://127.0.0.1:8000")
    assert shell.stdout.splitlines()[1] == str(Path(sys.executable).parent / "python")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def test_sigterm_stops_what_dev_started(tmp_path: Path) -> None:
    """`make run` stopped by SIGTERM (a process manager, `kill`) stops the embedded PostgreSQL
    and Valkey it started, as Ctrl-C does; they were left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    api, valkey = free_port(), free_port()
    env |= {"PYTHONPATH": str(ROOT), "AUDIT_PORT": str(api), "AUDIT_DEV_REDIS_PORT": str(valkey)}
    dev = subprocess.Popen(
        [sys.executable, "-m", "app", "dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    postgres = 0
    try:
        deadline = time.monotonic() + 120
        while not _ready(api):
            assert dev.poll() is None and time.monotonic() < deadline, "dev did not get ready"
            time.sleep(0.5)
        postgres = int((tmp_path / ".data/postgres/postmaster.pid").read_text().split()[0])
        assert _alive(postgres) and _answers(valkey)
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=60)
        deadline = time.monotonic() + 30
        while (_alive(postgres) or _answers(valkey)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(postgres), "the embedded PostgreSQL outlived dev"
        assert not _answers(valkey), "the embedded Valkey outlived dev"
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if postgres and _alive(postgres):  # never leave a server behind, pass or fail
            os.kill(postgres, signal.SIGQUIT)
        subprocess.run(["pkill", "-f", f"valkey-server 127.0.0.1:{valkey}"], check=False)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
