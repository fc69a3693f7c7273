"""Checkpoints of each chain's log: C2SP tlog-checkpoint notes signed with the Ed25519 ledger
key (C2SP signed-note, type 0x01), kept in the database and, once made and once cosigned,
appended to a file outside it.

A chain's origin is `<AUDIT_LOG_ORIGIN>/chain/<chain>`, and the note key that signs its
checkpoints is named after it (C2SP signed-note: a log's key is named by its origin), so a
witness is configured with `<origin>=<vkey>` for each chain (`python -m app checkpoint vkeys`
prints them). A checkpoint is made at a ledger entry's tree size, and carries three extension
lines binding it to that entry:

    <origin>
    <tree size>
    <base64 root hash>
    seq <the entry's seq>
    head <base64 of the entry's ledger head>
    sealed <the entry's sealed_at, RFC 3339 UTC with microseconds>

The file outside the database, one per chain, holds JSON lines `{"chain", "size", "note"}`
(the note as signed, then again with its cosignatures): appended with O_APPEND, fsynced line by
line, never rewritten. Nothing in it is believed for being there: a reader checks every note's
signatures (app.ledger.anchor).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from app.core.timefmt import format_timestamp, parse_timestamp
from app.ledger.notes import (
    ED25519,
    Checkpoint,
    NoteError,
    NoteSignature,
    VerifierKey,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
    public_key_of,
    sign_checkpoint,
)
from app.ledger.signing import ledger_private_key, raw_key

CHAIN_PART = "/chain/"

# One line of the outside file is a JSON object around one note; a longer line is not ours.
MAX_FILE_LINE = 64 * 1024


def origin_of(log_origin: str, chain: int) -> str:
    return f"{log_origin}{CHAIN_PART}{chain}"


def chain_of(log_origin: str, origin: str) -> int | None:
    """The chain an origin of this log names (None: another log's origin)."""
    prefix = log_origin + CHAIN_PART
    if not origin.startswith(prefix):
        return None
    number = origin[len(prefix) :]
    if not number.isdigit() or number != str(int(number)) or int(number) >= 1024:
        return None
    return int(number)


def log_keys(log_origin: str, chain: int, public_keys: str) -> tuple[VerifierKey, ...]:
    """The note keys a chain's checkpoints are signed with: each Ed25519 ledger public key
    (a comma list, AUDIT_LEDGER_PUBLIC_KEY) named by the chain's origin."""
    origin = origin_of(log_origin, chain)
    raws = [raw_key(k, "ledger public key") for k in public_keys.split(",") if k.strip()]
    return tuple(VerifierKey(origin, ED25519, raw) for raw in raws)


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """What a checkpoint's extension lines say of the ledger entry at its size."""

    seq: int
    head: bytes
    sealed_at: datetime

    def lines(self) -> tuple[str, ...]:
        return (
            f"seq {self.seq}",
            f"head {base64.b64encode(self.head).decode()}",
            f"sealed {format_timestamp(self.sealed_at)}",
        )


def entry_facts(checkpoint: Checkpoint) -> EntryFacts | None:
    """The entry a checkpoint of this service names (None: not the three lines it writes)."""
    if len(checkpoint.extensions) != 3:
        return None
    seq, head, sealed = checkpoint.extensions
    try:
        if not (seq.startswith("seq ") and head.startswith("head ")):
            return None
        if not sealed.startswith("sealed "):
            return None
        raw_head = base64.b64decode(head[5:], validate=True)
        number = seq[4:]
        if not number.isdigit() or len(raw_head) != 32:
            return None
        return EntryFacts(int(number), raw_head, parse_timestamp(sealed[7:]))
    except (binascii.Error, ValueError):
        return None


def checkpoint_of(log_origin: str, chain: int, entry: Any) -> Checkpoint:
    """The checkpoint of the chain's log at a ledger entry (a row of audit_ledger)."""
    facts = EntryFacts(entry["seq"], bytes(entry["head"]), entry["sealed_at"])
    return Checkpoint(
        origin_of(log_origin, chain),
        int(entry["tree_size"]),
        bytes(entry["tree_root"]),
        facts.lines(),
    )


class LogSigner:
    """Signs a chain's checkpoints with the Ed25519 ledger key (AUDIT_LEDGER_PRIVATE_KEY)."""

    def __init__(self, log_origin: str, private_key_b64: str) -> None:
        self.log_origin = log_origin
        self._key = ledger_private_key(private_key_b64)

    def key(self, chain: int) -> VerifierKey:
        return VerifierKey(origin_of(self.log_origin, chain), ED25519, public_key_of(self._key))

    def sign(self, checkpoint: Checkpoint) -> str:
        return sign_checkpoint(checkpoint, checkpoint.origin, self._key)


# -- in the database ----------------------------------------------------------------------------

# The newest checkpoints of a chain no larger than its log: a row above it is not one of ours.
NEWEST_CHECKPOINTS = """
SELECT tree_size, note FROM audit_checkpoints
WHERE chain = $1 AND tree_size <= $2 ORDER BY tree_size DESC LIMIT $3
"""
INSERT_CHECKPOINT = """
INSERT INTO audit_checkpoints (chain, tree_size, root, seq, sealed_at, note)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
"""
INSERT_COSIGNATURE = """
INSERT INTO audit_checkpoint_cosignatures (chain, tree_size, witness, line, cosigned_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
"""
COSIGNATURES = """
SELECT witness, line FROM audit_checkpoint_cosignatures
WHERE chain = $1 AND tree_size = $2 ORDER BY witness
"""
# The newest checkpoints that have cosignatures, a few per chain: anchors' candidates.
COSIGNED_CHECKPOINTS = """
SELECT c.chain, c.note,
       (SELECT string_agg(s.line, '' ORDER BY s.witness) FROM audit_checkpoint_cosignatures s
        WHERE s.chain = c.chain AND s.tree_size = c.tree_size) AS lines
FROM audit_checkpoints c
WHERE EXISTS (SELECT 1 FROM audit_checkpoint_cosignatures s
              WHERE s.chain = c.chain AND s.tree_size = c.tree_size)
ORDER BY c.chain, c.tree_size DESC
"""


async def store_checkpoint(
    conn: asyncpg.Connection, chain: int, checkpoint: Checkpoint, note: str, facts: EntryFacts
) -> None:
    await conn.execute(
        INSERT_CHECKPOINT,
        chain,
        checkpoint.size,
        checkpoint.root_hash,
        facts.seq,
        facts.sealed_at,
        note,
    )


async def store_cosignatures(
    conn: asyncpg.Connection,
    chain: int,
    size: int,
    cosignatures: Iterable[tuple[VerifierKey, NoteSignature, datetime]],
) -> None:
    rows = [(chain, size, key.vkey, sig.line, at) for key, sig, at in cosignatures]
    if rows:
        await conn.executemany(INSERT_COSIGNATURE, rows)


async def cosigned_note(conn: asyncpg.Connection, chain: int, size: int, note: str) -> str:
    """The signed note with the cosignatures stored for it appended: only lines that keep it a
    well-formed note (the rows are a copy anyone with INSERT could add to; signatures are
    checked by whoever reads the note)."""
    lines = ""
    for row in await conn.fetch(COSIGNATURES, chain, size):
        try:
            parse_note(note + lines + row["line"])
        except NoteError:
            continue
        lines += row["line"]
    return note + lines


CANDIDATES = 5


async def newest_served(
    conn: asyncpg.Connection, chain: int, log_size: int, keys: Sequence[VerifierKey]
) -> tuple[int, str] | None:
    """(size, cosigned note) of the chain's newest stored checkpoint within its log's size
    that its note says is of that size and, given the log's keys, is signed by one of them."""
    for row in await conn.fetch(NEWEST_CHECKPOINTS, chain, log_size, CANDIDATES):
        note = row["note"]
        try:
            text = parse_note(note)[0]
            if parse_checkpoint(text).size != row["tree_size"]:
                continue
            if keys:
                open_checkpoint(note, parse_checkpoint(text).origin, keys)
        except NoteError:
            continue
        return row["tree_size"], await cosigned_note(conn, chain, row["tree_size"], note)
    return None


async def stored_cosigned(conn: asyncpg.Connection, per_chain: int = 3) -> list[tuple[int, str]]:
    """(chain, cosigned note) of the newest cosigned checkpoints, `per_chain` of each chain."""
    found: list[tuple[int, str]] = []
    counts: dict[int, int] = {}
    for row in await conn.fetch(COSIGNED_CHECKPOINTS):
        chain = row["chain"]
        if counts.get(chain, 0) < per_chain:
            counts[chain] = counts.get(chain, 0) + 1
            found.append((chain, row["note"] + (row["lines"] or "")))
    return found


# -- outside the database -----------------------------------------------------------------------


# The file outside the database a note goes to: every signed one, and apart, those cosigned
# (so a run of notes the witnesses refuse never pushes the last cosigned one out of reach).
COSIGNED_NOT_YET = "checkpoints"
COSIGNED = "cosigned"


def checkpoint_file(directory: Path, chain: int, kind: str = COSIGNED_NOT_YET) -> Path:
    return directory / f"chain-{chain}.{kind}"


def _private_directory(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def append_checkpoint(
    directory: Path, chain: int, size: int, note: str, kind: str = COSIGNED_NOT_YET
) -> None:
    """Append one note to the chain's file of that kind and fsync it (the directory too when
    the file is new). Raises OSError: the caller counts it and goes on."""
    path = checkpoint_file(_private_directory(directory), chain, kind)
    line = orjson.dumps({"chain": chain, "size": size, "note": note}) + b"\n"
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_checkpoint_files(directory: Path, newest: int = 8) -> Iterator[tuple[int, str]]:
    """(chain, note) of the last `newest` notes of each chain's file (a torn or foreign line is
    skipped: a note counts only by its signatures, checked by the reader)."""
    if not directory.is_dir():
        return
    paths = [*directory.glob(f"chain-*.{COSIGNED}"), *directory.glob(f"chain-*.{COSIGNED_NOT_YET}")]
    for path in sorted(paths):
        for line in _last_lines(path, newest):
            try:
                record = orjson.loads(line)
                chain, note = record["chain"], record["note"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(chain, int) and isinstance(note, str):
                yield chain, note


def _last_lines(path: Path, count: int) -> list[bytes]:
    """The last `count` lines of a file, reading at most count * MAX_FILE_LINE bytes."""
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        start = max(0, size - count * MAX_FILE_LINE)
        file.seek(start)
        data = file.read()
    lines = data.split(b"\n")
    if start:
        lines = lines[1:]  # the first is a part of a line
    return [line for line in lines if line][-count:]
