"""A key's retirement takes effect at a position of its chain's log, recorded in the log: no time
a row carries decides whether its key was still valid."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from app.core.config import Settings, SigningKey
from app.core.timefmt import format_timestamp
from app.events.model import EventIn
from app.ledger.parallel_verify import split, verify_whole_chain
from app.ledger.proofs import verify_event
from app.ledger.rotation import RETIREMENT_ACTION
from app.ledger.verify import Finding, Verifier, verify_chains, verify_range
from app.ledger.verify_guard import verifier_for
from app.writer.batch import record_row
from app.writer.group import WriterGroup
from tests.conftest import Sealed, SealedFactory, seal
from tests.ledger.forge import append_forged_batch

NEW_EVENT_KEY = "test-2:" + base64.b64encode(b"n" * 32).decode()
NEW_LEDGER_KEY = "ledger-2:" + base64.b64encode(b"m" * 32).decode()


def retired(key: SigningKey, at: datetime) -> str:
    return f"{key.key_id}:{base64.b64encode(key.secret).decode()}@{format_timestamp(at)}"


def rotate(sealed: Sealed, at: datetime) -> Settings:
    """New active keys in both rings, the old ones retired at `at`: the settings every process
    of the service now runs with."""
    settings = sealed.res.settings
    rotated = settings.model_copy(
        update={
            "signing_keys": f"{NEW_EVENT_KEY},{retired(settings.signing_key_ring[0], at)}",
            "ledger_keys": f"{NEW_LEDGER_KEY},{retired(settings.ledger_key_ring[0], at)}",
        }
    )
    for ring in ("signing_key_ring", "ledger_key_ring"):
        rotated.__dict__.pop(ring, None)
    sealed.res.settings = rotated
    return rotated


async def start_writer_process(settings: Settings, sealed: Sealed) -> None:
    """What a writer process does when it starts (and stops again)."""
    res = sealed.res
    group = WriterGroup(settings, res.engine, res.stream, res.metrics)
    group.start()
    await group.stop()


def phi_read(key: SigningKey, at: datetime) -> tuple[Any, ...]:
    """One PHI access event as the writer would have stored it at `at`, signed with `key`."""
    event = EventIn.model_validate(
        {
            "action": "fhir.patient.read",
            "status": "success",
            "principal_id": "dr.mallory",
            "patient_id": "patient-17",
            "data_classification": "PHI",
            "timestamp": at,
        }
    )
    return record_row(event.to_record("org-sealed", format_timestamp(at)), key)


def run_verify(settings: Settings, *args: str) -> list[dict[str, Any]]:
    """`python -m app verify` with the service's keys: its findings, then its summary."""
    env = {
        **os.environ,
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_LEDGER_KEYS": settings.ledger_keys,
        "AUDIT_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@dataclass
class ForgedTail:
    sealed: Sealed
    settings: Settings  # the rotated settings every process runs with
    retired_at: datetime
    backdated: datetime  # the forged batch's times
    retirement: int  # the seq of the batch recording the retirements
    forged: int  # the seq of the forged batch
    tree_size: int  # the log's size after the retirement

    def verifier(self, organization: str | None = None) -> Verifier:
        return verifier_for(
            self.settings.signing_keys_by_id,
            self.settings.ledger_keys_by_id,
            "",
            organization,
            self.settings.operations_org,
        )

    def position(self) -> str:
        """How a finding names the retirement's position."""
        return f"retired by the log at seq {self.retirement} (tree size {self.tree_size}"


async def forged_tail(sealed_factory: SealedFactory) -> ForgedTail:
    """A chain sealed with test-1 and ledger-1, then with test-2 and ledger-2 once both old keys
    were retired (and the retirement recorded by a writer process starting), then a batch a
    database superuser holding the retired keys appended: a PHI access that never happened,
    dated a day before the retirement, its entry too."""
    sealed = await sealed_factory([3])  # sealed with test-1 and ledger-1
    old_events, old_ledger = (
        sealed.res.settings.signing_key_ring[0],
        sealed.res.settings.ledger_key_ring[0],
    )
    first = await sealed.conn.fetchval("SELECT sealed_at FROM audit_ledger WHERE seq = 1")
    retired_at = first + timedelta(milliseconds=1)  # after the first batch; passed by now
    await asyncio.sleep(0.01)
    settings = rotate(sealed, retired_at)
    await seal(sealed.res, sealed.org, [2])  # with the new keys
    await start_writer_process(settings, sealed)
    retirement = await sealed.conn.fetchrow("SELECT * FROM audit_ledger WHERE seq = 3")
    await seal(sealed.res, sealed.org, [2])
    backdated = retired_at - timedelta(days=1)
    seq = await append_forged_batch(
        sealed.conn, [phi_read(old_events, backdated)], old_ledger, sealed_at=backdated
    )
    return ForgedTail(sealed, settings, retired_at, backdated, 3, seq, retirement["tree_size"])


def named(findings: Iterable[Finding]) -> set[tuple[str, int | None, bool]]:
    return {(f.check, f.seq, f.event_id is not None) for f in findings}


async def test_a_tail_forged_with_retired_keys_and_backdated_is_found(
    sealed_factory: SealedFactory,
) -> None:
    tail = await forged_tail(sealed_factory)
    seq = tail.forged

    *findings, summary = await asyncio.to_thread(run_verify, tail.settings)
    found = {(f["check"], f["seq"], f["event_id"] is not None) for f in findings}
    said = f"verify: intact {summary['intact']}, findings {summary['findings_by_check']}"
    assert ("retired_key_used", seq, True) in found, said  # the forged event
    assert ("retired_key_used", seq, False) in found, said  # its ledger entry
    assert ("sealed_at_decreased", seq, False) in found, said
    # Nothing else: the old keys' batch before the retirement, and the retirement, are intact.
    assert len(findings) == 3 and summary["intact"] is False, said
    for finding in findings:
        if finding["check"] == "retired_key_used":
            assert tail.position() in finding["detail"]


async def test_every_way_of_verifying_knows_the_retirement(
    sealed_factory: SealedFactory,
) -> None:
    tail = await forged_tail(sealed_factory)
    conn, seq = tail.sealed.conn, tail.forged
    expected = {
        ("retired_key_used", seq, True),
        ("retired_key_used", seq, False),
        ("sealed_at_decreased", seq, False),
    }
    verifier = tail.verifier()
    # In parts, each in its own process: the retirement lies in the part before the forged one.
    assert split(1, seq, 3, 1) == [(1, 2), (3, 4), (5, 5)]
    dsn = tail.settings.asyncpg_dsn
    report = await verify_whole_chain(conn, dsn, verifier, jobs=3, min_per_job=1)
    assert named(report.findings) == expected
    # A seq range starting past the retirement.
    report = await verify_range(conn, verifier, seq, seq)
    assert named(report.findings) == expected
    # A time range holding only the forged batch's events (the retirement's are not read).
    hour = timedelta(hours=1)
    times = (tail.backdated - hour, tail.backdated + hour)
    report = await verify_range(conn, verifier, times=times)
    assert named(report.findings) == expected
    # One organization's verification, and the forged event's own verdict.
    report = await verify_chains(conn, tail.verifier(tail.sealed.org))
    assert named(report.findings) == expected
    event_id = await conn.fetchval(
        "SELECT event_id FROM audit_log WHERE principal_id = 'dr.mallory'"
    )
    verdict = await verify_event(conn, tail.verifier(tail.sealed.org), tail.sealed.org, event_id)
    assert verdict is not None
    assert [p.split(" (")[0] for p in verdict.problems] == [
        "signed with a retired key",
        "ledger entry signed with a retired key",
    ]
    assert all(tail.position() in p for p in verdict.problems)


async def test_a_retirement_whose_own_signature_fails_retires_nothing(
    sealed_factory: SealedFactory,
) -> None:
    tail = await forged_tail(sealed_factory)
    conn = tail.sealed.conn
    # Its row altered (as its owner can): the retirement no longer checks, so it is named, and
    # the keys it named are held to their configured time only.
    await conn.execute(
        "UPDATE audit_log SET outcome_description = 'x' WHERE action = $1", RETIREMENT_ACTION
    )
    report = await verify_chains(conn, tail.verifier())
    found = named(report.findings)
    assert ("event_hash_mismatch", tail.retirement, True) in found
    assert ("sealed_at_decreased", tail.forged, False) in found
    assert not {f for f in found if f[0] == "retired_key_used"}
