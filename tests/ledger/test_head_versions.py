"""An entry's head version never goes down along a chain: a v2 head after v3 ones commits to
no sealed_at, so a backdated entry of an older version would escape sealed_at_decreased and be
judged by a time nobody committed to."""

from __future__ import annotations

from datetime import timedelta

from app.ledger.chain import ledger_head_v2, sign_head
from tests.conftest import SealedFactory


async def test_a_v2_entry_after_v3_ones_is_named(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([2, 3])
    entry = await sealed.conn.fetchrow("SELECT * FROM audit_ledger WHERE seq = 2")
    assert entry["head_version"] == 3
    # Rewritten as its writer could with the ledger key: a valid v2 head, backdated.
    head = ledger_head_v2(
        bytes(entry["prev_head"]),
        2,
        bytes(entry["merkle_root"]),
        entry["event_count"],
        entry["first_timestamp"],
        entry["last_timestamp"],
        entry["tree_size"],
        bytes(entry["tree_root"]),
    )
    key = sealed.res.settings.ledger_key_ring[0]
    async with sealed.conn.transaction():
        await sealed.conn.execute("SET LOCAL session_replication_role = replica")
        await sealed.conn.execute(
            """UPDATE audit_ledger SET head_version = 2, head = $1, signature = $2,
               sealed_at = sealed_at - $3::interval WHERE seq = 2""",
            head,
            sign_head(head, key),
            timedelta(days=30),
        )
    report = await sealed.verify()
    assert [(f.check, f.seq) for f in report.findings] == [("head_version_decreased", 2)]
    assert report.findings[0].detail == "head v2 after v3 at seq 1"
