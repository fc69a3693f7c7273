"""The witness's state: per log origin, the latest checkpoint it cosigned. One JSON file a log,
named by the SHA-256 of the origin (as tlog-witness names a log to monitors), in a directory of
the witness's own (0700), with a lock file that one witness process holds while it runs.

A file is replaced whole: written to a temp file (O_EXCL, 0600), fsynced, renamed over the old
one, and the directory fsynced, so a crash leaves the old state or the new one, never a part;
a stray temp file is ignored. The state never goes backwards: `record` refuses a smaller size or
another root at the same size, whatever its caller checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.ledger.tlog import HASH_SIZE

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = "lock"
_STATE_FILE = re.compile(r"[0-9a-f]{64}\.json")


class StateError(RuntimeError):
    """The state directory or a state file cannot be used, or an update would go backwards."""


def origin_hash(origin: str) -> str:
    """SHA-256 of the origin line, lower-case hex (C2SP tlog-witness, Monitor Retrieval)."""
    return hashlib.sha256(origin.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LogState:
    """The latest checkpoint cosigned for a log: its size and root hash, and the note as
    cosigned (the checkpoint text, the log's verified signatures, the witness's cosignature)."""

    origin: str
    size: int
    root_hash: bytes
    note: str

    def encode(self) -> bytes:
        root = base64.b64encode(self.root_hash).decode()
        fields = {"origin": self.origin, "size": self.size, "root_hash": root, "note": self.note}
        return json.dumps(fields, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> LogState:
        fields = json.loads(data)
        state = cls(
            fields["origin"], fields["size"], base64.b64decode(fields["root_hash"]), fields["note"]
        )
        if (
            not isinstance(state.origin, str)
            or not isinstance(state.size, int)
            or state.size < 0
            or len(state.root_hash) != HASH_SIZE
            or not isinstance(state.note, str)
        ):
            raise ValueError("malformed log state")
        return state


def private_directory(path: Path) -> Path:
    """`path` as a directory only this user can use: made 0700, an existing one of ours
    tightened to 0700, one owned by another user refused."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise StateError(f"{path} is not a directory owned by this user")
    if stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        path.chmod(DIRECTORY_MODE)
    return path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_file(directory: Path, name: str, data: bytes) -> Path:
    """`data` in a new temp file beside `name`, 0600, made with O_EXCL and fsynced."""
    temp = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return temp


def replace_file(directory: Path, name: str, data: bytes) -> None:
    """Writes `name` in `directory` whole or not at all (temp file, fsync, rename, directory
    fsync)."""
    temp = _temp_file(directory, name, data)
    try:
        os.replace(temp, directory / name)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def create_file(directory: Path, name: str, data: bytes) -> bool:
    """Writes `name` whole unless it exists (then False and it is left alone): a temp file
    hard-linked to the name, which fails rather than replaces."""
    temp = _temp_file(directory, name, data)
    try:
        os.link(temp, directory / name)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    _fsync_directory(directory)
    return True


class WitnessState:
    """The latest cosigned checkpoint of every log, in memory and on disk; one per directory,
    which it holds locked (fcntl) while open. Updates of a log are serialized by its lock:
    a caller checks a checkpoint against `latest` and `record`s it under `lock(origin)`, so
    that no two requests both pass the check against the same state."""

    def __init__(self, directory: Path, logs: dict[str, LogState], lock_fd: int) -> None:
        self.directory = directory
        self._logs = logs
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_fd = lock_fd

    @classmethod
    @contextlib.contextmanager
    def open(cls, directory: Path) -> Iterator[WitnessState]:
        """Locks the directory (StateError if another process holds it) and loads every state
        file; a file that cannot be read stops the witness (StateError): forgetting a log's
        state would let it cosign a rollback."""
        private_directory(directory)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateError(f"another witness holds {directory}") from exc
            yield cls(directory, load_states(directory), fd)
        finally:
            os.close(fd)  # releases the lock

    def latest(self, origin: str) -> LogState | None:
        return self._logs.get(origin)

    def lock(self, origin: str) -> asyncio.Lock:
        return self._locks.setdefault(origin, asyncio.Lock())

    async def record(self, state: LogState) -> None:
        """Persists a log's new state, then takes it as the latest. Raises StateError for a
        smaller size or a different root at the same size (the state never goes backwards),
        and OSError when the disk refuses (the state stays as it was)."""
        current = self._logs.get(state.origin)
        if current is not None and (
            state.size < current.size
            or (state.size == current.size and state.root_hash != current.root_hash)
        ):
            raise StateError(f"{state.origin}: refusing to go back from size {current.size}")
        name = origin_hash(state.origin) + ".json"
        await asyncio.to_thread(replace_file, self.directory, name, state.encode())
        self._logs[state.origin] = state


def load_states(directory: Path) -> dict[str, LogState]:
    """Every `<origin hash>.json` in the directory; other files (temp files a crash left, the
    lock, the key) are not state."""
    logs: dict[str, LogState] = {}
    for path in sorted(directory.iterdir()):
        if not _STATE_FILE.fullmatch(path.name):
            continue
        try:
            state = LogState.decode(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"cannot read the witness state {path}: {exc}") from exc
        if path.name != origin_hash(state.origin) + ".json":
            raise StateError(f"{path} holds the state of another log ({state.origin!r})")
        logs[state.origin] = state
    return logs
