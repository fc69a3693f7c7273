"""Pure helpers: event ids, cursors, signing-key parsing, scopes, backoff."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from app.api.pagination import CursorError, decode_cursor, encode_cursor
from app.api.schemas import new_event_id
from app.apikeys.keys import hash_api_key, new_api_key, parse_scopes
from app.core.config import parse_signing_keys, plain_postgres_url
from app.ledger.verify import MAX_KEPT_FINDINGS, Finding, Findings
from app.writer.writer import backoff_seconds


def test_event_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [uuid.UUID(new_event_id()) for _ in range(200)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    assert len(set(ids)) == len(ids)


def test_cursor_round_trip_and_golden_value() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    event_id = uuid.UUID("01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6")
    cursor = encode_cursor(moment, event_id)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert raw == b'["2026-01-02T03:04:05.678901Z","01936f4e-8a2b-7c3d-9e4f-a1b2c3d4e5f6","desc"]'
    assert decode_cursor(cursor) == (moment, event_id)
    with pytest.raises(CursorError):
        decode_cursor(cursor, "asc")


@pytest.mark.parametrize("bad", ["", "!!!", "bm90IGpzb24", "WzFd", "WyJ4IiwieSJd"])
def test_foreign_cursors_are_refused(bad: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(bad)


def test_signing_keys_parse_and_reject_bad_input() -> None:
    secret = base64.b64encode(b"s" * 32).decode()
    keys = parse_signing_keys(f"new:{secret}, old:{secret}")
    assert [k.key_id for k in keys] == ["new", "old"]
    assert keys[0].secret == b"s" * 32
    for bad in ("nocolon", f"a:{secret},a:{secret}", "a:not-base64!", "a:" + "c2hvcnQ="):
        with pytest.raises(ValueError):
            parse_signing_keys(bad)


def test_database_urls_are_normalized() -> None:
    assert plain_postgres_url("postgres://u@h:5/d") == "postgresql://u@h:5/d"
    with pytest.raises(ValueError):
        plain_postgres_url("mysql://u@h/d")


def test_api_keys_are_random_and_hashed() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("aik_") and len(a) > 40
    assert hash_api_key(a) != hash_api_key(b) and len(hash_api_key(a)) == 32
    assert parse_scopes("read, ingest,read") == ["ingest", "read"]
    for bad in ("", "read,root"):
        with pytest.raises(ValueError):
            parse_scopes(bad)


def test_backoff_grows_and_is_capped() -> None:
    assert 0.05 <= backoff_seconds(0, 100, 5000) <= 0.1
    assert 0.4 <= backoff_seconds(3, 100, 5000) <= 0.8
    assert 2.5 <= backoff_seconds(30, 100, 5000) <= 5.0


def test_findings_keep_memory_flat_but_count_everything() -> None:
    findings = Findings()
    findings += (Finding("event_hash_mismatch", 1) for _ in range(MAX_KEPT_FINDINGS + 5))
    findings.append(Finding("chain_link_broken", 2))
    assert len(findings) == MAX_KEPT_FINDINGS
    assert findings.total == MAX_KEPT_FINDINGS + 6
    assert findings.by_check == {
        "event_hash_mismatch": MAX_KEPT_FINDINGS + 5,
        "chain_link_broken": 1,
    }
