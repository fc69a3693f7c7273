"""Where a verification finds the cosigned checkpoints it is anchored to: the witnesses' state
on this host (AUDIT_WITNESS_DIR, when readable), the checkpoint files outside the database
(AUDIT_CHECKPOINT_DIR), the database's own copy, and notes an auditor gives. Each counts only by
its signatures (app.ledger.anchor)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from app.core.config import Settings
from app.ledger.anchor import AnchorPolicy, Anchors, choose_anchors
from app.ledger.checkpoints import read_checkpoint_files, stored_cosigned
from app.witness.state import StateError, load_states

log = logging.getLogger(__name__)


def anchor_policy(settings: Settings) -> AnchorPolicy:
    return AnchorPolicy.of(
        settings.log_origin,
        settings.ledger_public_key,
        settings.witnesses,
        settings.witness_quorum,
    )


def witness_state_notes(directory: Path) -> list[tuple[str, str]]:
    """The cosigned notes of a witness's state directory ([] when there is none here)."""
    if not directory.is_dir():
        return []
    try:
        states = load_states(directory)
    except (StateError, OSError) as exc:
        log.warning("cannot read the witness state in %s: %s", directory, exc)
        return []
    return [("witness state", state.note) for state in states.values()]


async def find_anchors(
    settings: Settings, conn: asyncpg.Connection, given: Iterable[tuple[str, str]] = ()
) -> Anchors:
    """The newest anchor of each chain from every place a cosigned checkpoint is kept."""
    candidates = list(given)
    candidates += witness_state_notes(Path(settings.witness_dir))
    directory = Path(settings.checkpoint_dir)
    candidates += [("checkpoint files", note) for _, note in read_checkpoint_files(directory)]
    candidates += [("database", note) for _, note in await stored_cosigned(conn)]
    return choose_anchors(anchor_policy(settings), candidates)
