"""The one record shape: what to_record makes, what audit_log stores and what the canonical form
covers are the same 22 fields."""

from __future__ import annotations

from app.events.model import EventIn
from app.events.record import EventRecord
from app.ledger.hashing import CANONICAL_FIELDS
from app.store.models import AUDIT_COLUMNS
from tests.conftest import event

INTEGRITY_AND_PLACE = {"hash", "signature", "key_id", "batch_id", "leaf_index"}


def test_the_canonical_fields_are_the_records_in_sorted_order() -> None:
    assert CANONICAL_FIELDS == tuple(sorted(EventRecord.__required_keys__))
    assert len(CANONICAL_FIELDS) == 22 and not EventRecord.__optional_keys__


def test_the_record_is_every_stored_column_but_the_integrity_and_log_columns() -> None:
    assert set(EventRecord.__required_keys__) == set(AUDIT_COLUMNS) - INTEGRITY_AND_PLACE


def test_to_record_fills_every_field_of_the_record() -> None:
    bare = EventIn.model_validate(event()).to_record("org-1", "2026-11-20T10:00:00.000000Z")
    assert bare.keys() == EventRecord.__required_keys__
