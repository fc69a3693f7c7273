"""The Python client's spool on disk: a spooled event that can no longer be read is set aside
alone and the rest of its batch sent, a file that is not a batch at all is set aside whole
under its own suffix, and temporary files a crash left behind are removed."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from audit_ingest_client import AsyncAuditClient, AuditClient, Retry, Spool

from app.local.servers import free_port
from tests.conftest import SettingsFactory, running, wait_stored
from tests.sdk.test_client import event, stored_ids
from tests.sdk.test_refusals import set_aside

QUICK = Retry(attempts=1)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "audit_ingest_client")


async def test_a_spooled_event_that_fails_the_checks_is_set_aside_alone(
    settings_factory: SettingsFactory,
    org: str,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch spooled by an older client holds events this one refuses to make (a status it
    does not know, a field of the wrong type, an item that is no object): those are set aside
    alone, with why, and the others of the batch are sent."""
    caplog.set_level(logging.INFO, logger="audit_ingest_client")
    spool = tmp_path / "spool"
    Spool(spool)
    good = [event(n) for n in range(6)]
    old_status = {**event(10).to_json(), "status": "ok", "patient_id": "p-secret-1"}
    wrong_type = {**event(11).to_json(), "principal_id": 42, "patient_id": "p-secret-2"}
    items: list[Any] = [e.to_json() for e in good]
    items[2:2] = [old_status]
    items[5:5] = [wrong_type, "p-secret-3"]
    batch = spool / "00000000000000000001-1.json"
    batch.write_text(json.dumps(items))
    os.chmod(batch, 0o600)

    nowhere = f"http://127.0.0.1:{free_port()}"
    with AuditClient(nowhere, "aik_x", retry=QUICK, spool_dir=spool) as away:
        assert away.flush_spool() is False  # the service is away: the good ones wait
        assert away.flush_spool() is False  # read again: nothing set aside twice
    assert Spool(spool).batches() == [batch] and Spool(spool).unreadable() == []
    records = set_aside(spool)
    assert [r["event"] for r in records] == [old_status, wrong_type, "p-secret-3"]
    assert all(r["status"] is None for r in records)
    assert all(r["reason"].startswith("unreadable in the spool: ") for r in records)
    assert "status" in records[0]["reason"] and "principal_id" in records[1]["reason"]
    text = logged(caplog)
    assert old_status["event_id"] in text and wrong_type["event_id"] in text
    assert "3 audit events" in text and "p-secret" not in text  # ids and counts, no PHI

    settings = settings_factory()
    async with running(settings) as svc:
        key = (await svc.key(org, ("ingest",)))["Authorization"].split(" ", 1)[1]
        client = AsyncAuditClient("http://test", key, spool_dir=spool)
        client._http = svc.client
        assert await client.flush_spool() is True
        await wait_stored(database_url, org, 6, within_s=5)
        assert sorted(await stored_ids(database_url, org)) == sorted(e.event_id for e in good)
    assert Spool(spool).batches() == [] and len(set_aside(spool)) == 3


def test_a_file_that_is_no_batch_is_set_aside_whole_as_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not JSON, or JSON but not a list: kept as it is, `*.unreadable`, apart from the refusal
    records (`*.failed`), and logged."""
    caplog.set_level(logging.INFO, logger="audit_ingest_client")
    spool = tmp_path / "spool"
    made = Spool(spool)
    made.put([event(0)])
    (batch,) = made.batches()
    broken = spool / "00000000000000000001-1.json"
    broken.write_text('{"patient_id": "p-secret", "not": "a list"}')
    torn = spool / "00000000000000000002-1.json"
    torn.write_text('[{"action": "fhir.patient.read", "patient_id": "p-sec')
    with AuditClient(f"http://127.0.0.1:{free_port()}", "aik_x", retry=QUICK) as client:
        client.spool = made
        assert client.flush_spool() is False
    assert made.unreadable() == [broken.with_suffix(".unreadable"), torn.with_suffix(".unreadable")]
    assert broken.with_suffix(".unreadable").read_text().startswith('{"patient_id"')
    assert made.failed() == [] and made.batches() == [batch]
    text = logged(caplog)
    assert broken.name in text and torn.name in text and "p-secret" not in text


def test_temporary_files_left_by_a_crash_are_removed_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A `*.tmp` file is a write never committed (it is renamed into place when whole): one
    older than a minute that no write holds is removed when a spool starts; one a write holds
    and a recent one are left."""
    caplog.set_level(logging.INFO, logger="audit_ingest_client")
    spool = tmp_path / "spool"
    Spool(spool).put([event(0)])
    old = time.time() - 120

    def temporary(name: str, at: float) -> tuple[Path, int]:
        path = spool / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b'[{"patient_id": "p-1"')
        os.utime(path, (at, at))
        return path, fd

    crashed, fd = temporary("00000000000000000001-999999.tmp", old)
    os.close(fd)
    writing, held = temporary("00000000000000000002-1.tmp", old)
    fcntl.flock(held, fcntl.LOCK_EX)  # a write still under way (a stalled disk)
    recent, fd = temporary("00000000000000000003-1.tmp", time.time())
    os.close(fd)
    try:
        made = Spool(spool)
    finally:
        os.close(held)
    assert not crashed.exists() and writing.exists() and recent.exists()
    assert len(made.batches()) == 1
    assert "1 unfinished spool file" in logged(caplog)
