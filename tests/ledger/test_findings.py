"""Verification's findings keep memory flat but count everything."""

from __future__ import annotations

from app.ledger.verify import MAX_KEPT_FINDINGS, Finding, Findings


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
