"""What a verification may start with: a key to check signatures with, and a range the ledger
has. Both the command line and the API ask here first, so neither can report "intact" for a run
that checked nothing, nor a tamper finding for a range past the newest entry."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from app.core.config import OPERATIONS_ORG, SigningKey
from app.ledger.sql import CHAIN_HEADS
from app.ledger.verify import Verifier


class NoVerificationKey(Exception):
    """Neither HMAC keys nor an Ed25519 public key: no signature could be checked."""


class RangeError(ValueError):
    """A seq range or chain the ledger does not have; `heads` names each chain's newest seq."""

    def __init__(self, message: str, heads: Mapping[int, int]) -> None:
        super().__init__(message)
        self.heads = dict(heads)


def verifier_for(
    keys: Mapping[str, SigningKey],
    ledger_keys: Mapping[str, SigningKey],
    public_key: str,
    organization_id: str | None = None,
    operations_org: str = OPERATIONS_ORG,
) -> Verifier:
    """The verifier of every path. The HMAC keys (of events and of the ledger, both) check
    everything; the public key alone checks the ledger heads (and so, through the Merkle roots,
    every event hash) but no HMAC. `operations_org`: where the service records key
    retirements (AUDIT_OPERATIONS_ORG)."""
    if bool(keys) != bool(ledger_keys):
        raise NoVerificationKey(
            "set both AUDIT_SIGNING_KEYS and AUDIT_LEDGER_KEYS to check the HMACs (or neither, "
            "with the ledger's Ed25519 public key)"
        )
    if not keys and not public_key:
        raise NoVerificationKey(
            "no key to verify with: set AUDIT_SIGNING_KEYS and AUDIT_LEDGER_KEYS (or give the "
            "ledger's Ed25519 public key, AUDIT_LEDGER_PUBLIC_KEY or --public-key)"
        )
    return Verifier(
        keys,
        public_key,
        organization_id,
        check_hmac=bool(keys),
        ledger_keys=ledger_keys,
        operations_org=operations_org,
    )


async def chain_heads(conn: asyncpg.Connection) -> dict[int, int]:
    """The newest seq of each chain that has entries."""
    return {r["chain"]: r["head"] for r in await conn.fetch(CHAIN_HEADS)}


async def resolve_range(
    conn: asyncpg.Connection, chain: int | None, from_seq: int | None, to_seq: int | None
) -> tuple[int, int]:
    """The seq range first..last of `chain` (0 when None) to verify: the whole chain when no
    seq is given; a range within 1..head otherwise. Raises RangeError naming the head."""
    heads = await chain_heads(conn)
    number = chain or 0
    if number not in heads and (chain is not None and number != 0):
        known = ", ".join(str(c) for c in heads) or "none"
        raise RangeError(f"chain {number} has no ledger entries (chains: {known})", heads)
    head = heads.get(number, 0)
    if from_seq is None and to_seq is None:
        return 1, head
    if head == 0:
        raise RangeError(f"the ledger of chain {number} is empty: the head is seq 0", heads)
    first, last = from_seq or 1, head if to_seq is None else to_seq
    where = f"chain {number}'s head is seq {head}"
    if max(first, last) > head:
        raise RangeError(f"seq {max(first, last)} is past the newest ledger entry ({where})", heads)
    if first > last:
        raise RangeError(f"from_seq {first} is after to_seq {last} ({where})", heads)
    return first, last
