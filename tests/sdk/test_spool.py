"""The Python client's spool on disk: a spooled event that can no longer be read is set aside
alone and the rest of its batch sent, a file that is not a batch at all is set aside whole
under its own suffix, and temporary files a crash left behind are removed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from audit_ingest_client import AuditClient, Retry, Spool

from loadtests.faults.servers import free_port
from tests.sdk.test_client import event

QUICK = Retry(attempts=1)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "audit_ingest_client")


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
