"""The log's side of C2SP tlog-witness: the add-checkpoint request and its answers, one witness
asked for a cosignature (once more from the size a 409 names), and all of a log's witnesses
asked at once for a quorum.

The request body is `old <size>\\n`, the consistency proof from that size (one base64 hash a
line, at most 63), an empty line and the signed checkpoint. A witness answers 200 with its
cosignature lines, or 409 with the size it has recorded (`text/x.tlog.size`), or another status
that refuses the checkpoint. The wire format is here for both sides: `app.witness` parses what
`add_checkpoint` sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.config import parse_pairs
from app.ledger.notes import (
    COSIGNATURE_V1,
    MAX_NOTE_BYTES,
    MAX_TREE_SIZE,
    Checkpoint,
    NoteError,
    NoteSignature,
    VerifierKey,
    cosignature_timestamp,
    cosigned_by,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
)
from app.ledger.tlog import HASH_SIZE

if TYPE_CHECKING:  # imported where a witness is asked: verification reads notes, asks none
    import httpx

ADD_CHECKPOINT_PATH = "/add-checkpoint"
TLOG_SIZE_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63

_OLD_LINE_MAX = len(f"old {MAX_TREE_SIZE}\n")
_PROOF_LINE = len(base64.b64encode(bytes(HASH_SIZE))) + 1
# The largest body a client may send: the old size line, 63 proof lines, the empty line and
# the largest note app.ledger.notes opens.
MAX_REQUEST_BYTES = _OLD_LINE_MAX + MAX_PROOF_LINES * _PROOF_LINE + 1 + MAX_NOTE_BYTES
# A witness answers a few cosignature lines (an ML-DSA-44 one is about 3.3 kB in base64).
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 10.0

_SIZE = re.compile(rb"0|[1-9][0-9]{0,19}")


class WitnessProtocolError(ValueError):
    """An add-checkpoint body or a witness's answer is not as C2SP tlog-witness spells it."""


# -- the wire format ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """An add-checkpoint request: the size the client says the witness has recorded, the
    consistency proof from it, and the signed checkpoint note as sent."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes


def _size(raw: bytes) -> int:
    if not _SIZE.fullmatch(raw) or int(raw) > MAX_TREE_SIZE:
        raise WitnessProtocolError("a tree size is a decimal without leading zeros")
    return int(raw)


def format_add_checkpoint(
    old_size: int, proof: Sequence[bytes], checkpoint_note: str | bytes
) -> bytes:
    """The request body of add-checkpoint (C2SP tlog-witness)."""
    if not 0 <= old_size <= MAX_TREE_SIZE:
        raise ValueError(f"old size {old_size} is out of range")
    if len(proof) > MAX_PROOF_LINES or any(len(h) != HASH_SIZE for h in proof):
        raise ValueError(f"a proof is at most {MAX_PROOF_LINES} hashes of {HASH_SIZE} bytes")
    note = checkpoint_note.encode() if isinstance(checkpoint_note, str) else checkpoint_note
    lines = b"".join(base64.b64encode(h) + b"\n" for h in proof)
    return b"old %d\n" % old_size + lines + b"\n" + note


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Strict parse of an add-checkpoint body: `old <size>`, at most 63 lines of canonical
    base64 of 32 bytes, an empty line, then the note (opened by the caller). Raises
    WitnessProtocolError."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessProtocolError(f"body over {MAX_REQUEST_BYTES} bytes")
    head, blank, note = body.partition(b"\n\n")
    if not blank:
        raise WitnessProtocolError("no empty line before the checkpoint")
    old_line, *proof_lines = head.split(b"\n")
    if not old_line.startswith(b"old "):
        raise WitnessProtocolError("the first line is not `old <size>`")
    old_size = _size(old_line[4:])
    if len(proof_lines) > MAX_PROOF_LINES:
        raise WitnessProtocolError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    return AddCheckpoint(old_size, tuple(_proof_hash(line) for line in proof_lines), note)


def _proof_hash(line: bytes) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except binascii.Error as exc:
        raise WitnessProtocolError("a proof line is not base64") from exc
    if len(raw) != HASH_SIZE or base64.b64encode(raw) != line:
        raise WitnessProtocolError(f"a proof line is not the base64 of {HASH_SIZE} bytes")
    return raw


def format_tlog_size(size: int) -> bytes:
    """The body of a 409 answer: the recorded size and a newline (`text/x.tlog.size`)."""
    return b"%d\n" % size


def parse_tlog_size(body: bytes) -> int:
    if not body.endswith(b"\n"):
        raise WitnessProtocolError("a text/x.tlog.size body ends in a newline")
    return _size(body[:-1])


# -- witnesses ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Witness:
    """A witness as a log knows it: its submission prefix and its cosignature/v1 key."""

    url: str
    key: VerifierKey

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"witness URL {self.url!r} is not http(s)")
        if self.key.signature_type != COSIGNATURE_V1:
            raise ValueError(f"witness key {self.key.vkey} is not a cosignature/v1 key")

    @property
    def name(self) -> str:
        return self.key.name


def parse_witnesses(text: str) -> tuple[Witness, ...]:
    """AUDIT_WITNESSES: `<submission prefix URL>=<vkey>,...`, the vkey of type 0x04 (a URL
    holds no `=`: a prefix has no query). ValueError names the entry that is wrong."""
    witnesses: list[Witness] = []
    for url, vkey in parse_pairs(text):
        try:
            witness = Witness(url.rstrip("/"), parse_verifier_key(vkey))
        except NoteError as exc:
            raise ValueError(f"witness {url!r}: {exc}") from exc
        if any(w.url == witness.url or w.key == witness.key for w in witnesses):
            raise ValueError(f"witness {witness.url!r} or its key is named twice")
        witnesses.append(witness)
    return tuple(witnesses)


# -- asking one witness -------------------------------------------------------------------------


# The consistency proof from the given old size to the checkpoint's size (0 < old < size):
# a function the caller gives, since only the caller can read its tree. It may be async.
ProofFrom = Callable[[int], Sequence[bytes] | Awaitable[Sequence[bytes]]]


class WitnessRefused(Exception):
    """A witness gave no valid cosignature; `reason` says why in a line."""

    def __init__(self, witness: Witness, reason: str, status: int | None = None) -> None:
        super().__init__(f"{witness.name} ({witness.url}): {reason}")
        self.witness = witness
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Cosigned:
    """A witness's verified cosignature, and the size the witness had recorded before it (the
    old size its answer accepted: what to send it next time is the checkpoint's size)."""

    witness: Witness
    signature: NoteSignature
    old_size: int


async def _proof(proof_from: ProofFrom, old_size: int, size: int) -> list[bytes]:
    if old_size in (0, size):
        return []
    proof = proof_from(old_size)
    hashes = await proof if inspect.isawaitable(proof) else proof
    return list(hashes)


async def _post(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[int, str, bytes]:
    """Status, content type and at most MAX_RESPONSE_BYTES of the answer."""
    async with client.stream("POST", url, content=body) as response:
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                raise WitnessProtocolError(f"answer over {MAX_RESPONSE_BYTES} bytes")
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        return response.status_code, content_type, bytes(data)


def _short(data: bytes) -> str:
    """A refusal's body as one short printable line, for a reason."""
    text = data[:200].decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else " " for c in text) or "no message"


def verify_cosignature(witness: Witness, checkpoint: Checkpoint, answer: bytes) -> NoteSignature:
    """The cosignature by the witness's key among the signature lines of a 200 answer; lines
    of other keys are ignored. WitnessProtocolError when there is none, one by its key does
    not verify, or it has no timestamp."""
    try:
        lines = answer.decode()
        opened = open_note(checkpoint.text + "\n" + lines, [witness.key])
    except (UnicodeDecodeError, NoteError) as exc:
        raise WitnessProtocolError(f"no valid cosignature by {witness.key.vkey}: {exc}") from exc
    found = cosigned_by(opened, [witness.key])
    if not found:
        raise WitnessProtocolError(f"no cosignature by {witness.key.vkey}")
    if cosignature_timestamp(found[0]) == 0:
        raise WitnessProtocolError("the cosignature has no timestamp")
    return found[0]


def _recorded_size(
    witness: Witness, checkpoint: Checkpoint, content_type: str, answer: bytes
) -> int:
    """The size a 409 answer says the witness has recorded, when a proof from it to the
    checkpoint can exist; else WitnessRefused."""
    try:
        if content_type != TLOG_SIZE_TYPE:
            raise WitnessProtocolError(f"a 409 answer of type {content_type!r}")
        recorded = parse_tlog_size(answer)
    except WitnessProtocolError as exc:
        raise WitnessRefused(witness, f"HTTP 409: {exc}", 409) from exc
    if recorded > checkpoint.size:
        raise WitnessRefused(
            witness,
            f"it has cosigned size {recorded}, larger than this checkpoint's {checkpoint.size}",
            409,
        )
    return recorded


async def add_checkpoint(
    client: httpx.AsyncClient,
    witness: Witness,
    checkpoint_note: str,
    old_size: int,
    proof_from: ProofFrom,
) -> Cosigned:
    """Asks one witness to cosign a signed checkpoint, naming `old_size` as the size it has
    recorded (0 if unknown). When it answers 409 with another size not above the checkpoint's,
    asks once more with a proof from that size. Raises WitnessRefused; the caller bounds the
    time (the client's timeout, and `gather`'s deadline)."""
    checkpoint = parse_checkpoint(parse_note(checkpoint_note)[0])
    if not 0 <= old_size <= checkpoint.size:
        raise ValueError(f"old size {old_size} is not within 0..{checkpoint.size}")
    url = witness.url + ADD_CHECKPOINT_PATH
    for attempt in range(2):
        proof = await _proof(proof_from, old_size, checkpoint.size)
        body = format_add_checkpoint(old_size, proof, checkpoint_note)
        try:
            status, content_type, answer = await _post(client, url, body)
        except WitnessProtocolError as exc:
            raise WitnessRefused(witness, str(exc)) from exc
        if status == 200:
            try:
                return Cosigned(witness, verify_cosignature(witness, checkpoint, answer), old_size)
            except WitnessProtocolError as exc:
                raise WitnessRefused(witness, str(exc), status) from exc
        if status != 409:
            raise WitnessRefused(witness, f"HTTP {status}: {_short(answer)}", status)
        recorded = _recorded_size(witness, checkpoint, content_type, answer)
        if attempt or recorded == old_size:
            raise WitnessRefused(witness, f"HTTP 409 naming size {recorded} again", 409)
        old_size = recorded
    raise AssertionError("unreachable")


# -- asking all of them -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gathered:
    """What asking every witness gave: the cosignatures, and why each other witness gave
    none."""

    cosignatures: tuple[Cosigned, ...]
    failures: Mapping[Witness, str]
    quorum: int

    @property
    def reached(self) -> bool:
        return len(self.cosignatures) >= self.quorum

    def cosigned_note(self, checkpoint_note: str) -> str:
        """The checkpoint note with the cosignature lines appended (C2SP tlog-witness: the
        client may move them to its own view of the checkpoint)."""
        return checkpoint_note + "".join(c.signature.line for c in self.cosignatures)


async def gather(
    witnesses: Sequence[Witness],
    quorum: int,
    checkpoint_note: str,
    proof_from: ProofFrom,
    *,
    old_sizes: Mapping[Witness, int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    client: httpx.AsyncClient | None = None,
) -> Gathered:
    """Asks every witness at once to cosign the checkpoint, each within `timeout_s` (the
    size it last cosigned from `old_sizes`, else 0: a 409 tells). Never raises for a
    witness: each failure is named in `failures`. The caller decides what an unreached
    quorum means."""
    import httpx

    if not 0 <= quorum <= len(witnesses):
        raise ValueError(f"quorum {quorum} of {len(witnesses)} witnesses")
    known = old_sizes or {}

    async def ask(http: httpx.AsyncClient, witness: Witness) -> Cosigned | str:
        try:
            async with asyncio.timeout(timeout_s):
                old = known.get(witness, 0)
                return await add_checkpoint(http, witness, checkpoint_note, old, proof_from)
        except WitnessRefused as exc:
            return exc.reason
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bad proof from the caller, say: named, not raised
            return f"{type(exc).__name__}: {exc}"

    async def ask_all(http: httpx.AsyncClient) -> list[Cosigned | str]:
        return list(await asyncio.gather(*(ask(http, w) for w in witnesses)))

    if client is None:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as own:
            results = await ask_all(own)
    else:
        results = await ask_all(client)
    cosignatures = tuple(r for r in results if isinstance(r, Cosigned))
    failures = {w: r for w, r in zip(witnesses, results, strict=True) if isinstance(r, str)}
    return Gathered(cosignatures, failures, quorum)
