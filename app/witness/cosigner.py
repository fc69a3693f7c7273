"""add-checkpoint of C2SP tlog-witness, without HTTP: check a signed checkpoint against the latest
one cosigned for its log, persist it, cosign it.

The checks, in the spec's order, and what each refusal is (status, reason label):
- the body is as the spec spells it, the note and checkpoint too: 400 malformed;
- the origin is a log the witness knows: 404 unknown_log;
- a signature by one of the log's keys verifies, and none by them fails: 403 bad_signature;
- the old size is not above the checkpoint's: 400;
- the old size is the size recorded for the log (0 if none): 409 with the recorded size;
- a checkpoint of size 0 has the empty tree's root: 422 malformed;
- old size 0 comes with an empty proof; the same size with the same root (422 fork) and an
  empty proof; a larger size with a consistency proof from the recorded checkpoint that
  verifies: 422 bad_proof.
A 400 or 409 for a checkpoint smaller than the recorded one counts as `rollback`, a 409
otherwise as `conflict`. The check and the update of a log's state happen under its lock, so
two requests cannot both pass against the same state (the spec's rollback race).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.ledger.notes import (
    Checkpoint,
    InvalidNoteSignatureError,
    MalformedNoteError,
    Note,
    NoteError,
    UnverifiedNoteError,
    cosign,
    format_note,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
)
from app.ledger.tlog import EMPTY_ROOT, ProofError, verify_consistency
from app.ledger.witnessing import (
    TLOG_SIZE_TYPE,
    AddCheckpoint,
    WitnessProtocolError,
    format_tlog_size,
    parse_add_checkpoint,
)
from app.witness.config import WitnessConfig
from app.witness.state import LogState, WitnessState

REFUSAL_REASONS = (
    "malformed",
    "too_large",
    "unknown_log",
    "bad_signature",
    "conflict",
    "rollback",
    "fork",
    "bad_proof",
)


class Refusal(Exception):
    """A checkpoint the witness does not cosign: the HTTP status, the reason label, and the
    answer's body (a short line, or the recorded size for a 409)."""

    def __init__(
        self, status: int, reason: str, message: str, *, body: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body if body is not None else message.encode() + b"\n"
        self.content_type = TLOG_SIZE_TYPE if status == 409 else "text/plain; charset=utf-8"


def _shown(origin: str) -> str:
    """An origin as a refusal names it: a sender chooses it, so it is quoted and cut short."""
    return repr(origin[:100])


@dataclass
class Cosigner:
    config: WitnessConfig
    state: WitnessState
    clock: Callable[[], float] = time.time

    def open(self, request: AddCheckpoint) -> tuple[Checkpoint, Note]:
        """The checkpoint and its note, verified with its log's keys; or a 400, 404 or 403."""
        try:
            origin = parse_checkpoint(parse_note(request.checkpoint)[0]).origin
        except MalformedNoteError as exc:
            raise Refusal(400, "malformed", f"malformed checkpoint: {exc}") from exc
        keys = self.config.logs.get(origin)
        if keys is None:
            raise Refusal(404, "unknown_log", f"unknown log {_shown(origin)}")
        try:
            return open_checkpoint(request.checkpoint, origin, keys)
        except (UnverifiedNoteError, InvalidNoteSignatureError) as exc:
            raise Refusal(403, "bad_signature", f"log {_shown(origin)}: {exc}") from exc
        except NoteError as exc:
            raise Refusal(400, "malformed", f"malformed checkpoint: {exc}") from exc

    async def add_checkpoint(self, body: bytes) -> bytes:
        """The cosignature line for an add-checkpoint body, once the new state is on disk;
        or Refusal."""
        try:
            request = parse_add_checkpoint(body)
        except WitnessProtocolError as exc:
            raise Refusal(400, "malformed", f"malformed request: {exc}") from exc
        checkpoint, note = self.open(request)
        async with self.state.lock(checkpoint.origin):
            recorded = self.state.latest(checkpoint.origin)
            check_consistency(request, checkpoint, recorded)
            identity = self.config.identity
            # The spec forbids timestamp 0; a clock that far off is not worth a refusal.
            cosignature = cosign(note.text, identity.name, identity.private_key, self._now())
            cosigned = format_note(note.text, [*note.verified, cosignature])
            await self.state.record(
                LogState(checkpoint.origin, checkpoint.size, checkpoint.root_hash, cosigned)
            )
        return cosignature.line.encode()

    def _now(self) -> int:
        return max(1, int(self.clock()))


def check_consistency(
    request: AddCheckpoint, checkpoint: Checkpoint, recorded: LogState | None
) -> None:
    """Refusal unless the checkpoint extends the recorded one (none: the empty tree) by the
    request's proof."""
    origin, size, old = _shown(checkpoint.origin), checkpoint.size, request.old_size
    recorded_size = recorded.size if recorded else 0
    behind = size < recorded_size
    if old > size:
        reason = "rollback" if behind else "malformed"
        raise Refusal(400, reason, f"log {origin}: old size {old} is above the size {size}")
    if old != recorded_size:
        raise Refusal(
            409,
            "rollback" if behind else "conflict",
            f"log {origin}: old size {old}, but the recorded size is {recorded_size}"
            + (f" (and the checkpoint's {size} is below it)" if behind else ""),
            body=format_tlog_size(recorded_size),
        )
    if size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise Refusal(422, "malformed", f"log {origin}: size 0 without the empty tree's root")
    if old == 0:
        if request.proof:
            raise Refusal(422, "bad_proof", f"log {origin}: a proof from size 0 must be empty")
        return
    assert recorded is not None  # old == recorded_size > 0
    if size == old and checkpoint.root_hash != recorded.root_hash:
        raise Refusal(
            422,
            "fork",
            f"log {origin}: size {size} with root {checkpoint.root_hash.hex()}, but "
            f"{recorded.root_hash.hex()} was cosigned at that size",
        )
    try:
        verify_consistency(old, size, recorded.root_hash, checkpoint.root_hash, request.proof)
    except ProofError as exc:
        raise Refusal(
            422, "bad_proof", f"log {origin}: no consistency from size {old} to {size}: {exc}"
        ) from exc
