"""The witness's state on disk: file and directory modes, whole-file replacement (a crash
between writing and renaming leaves the old state), one process per directory, and no way
back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app.ledger.tlog import EMPTY_ROOT
from app.witness.config import KEY_FILE, load_identity
from app.witness.state import LOCK_FILE, LogState, StateError, WitnessState, origin_hash

ORIGIN = "audit.test/log"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state(size: int, root: bytes = b"r" * 32) -> LogState:
    return LogState(ORIGIN, size, EMPTY_ROOT if size == 0 else root, f"note of size {size}\n")


async def test_state_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "witness"
    load_identity(directory, "witness.test/w1", "")
    with WitnessState.open(directory) as witness:
        await witness.record(state(5))
    path = directory / f"{origin_hash(ORIGIN)}.json"
    assert mode(directory) == 0o700
    assert mode(path) == mode(directory / KEY_FILE) == mode(directory / LOCK_FILE) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [path.name, KEY_FILE, LOCK_FILE]
    )  # no temp file left behind

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    with WitnessState.open(loose):
        assert mode(loose) == 0o700  # an existing directory of ours is tightened


async def test_a_crash_between_write_and_rename_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with WitnessState.open(tmp_path) as witness:
        await witness.record(state(5))
    path = tmp_path / f"{origin_hash(ORIGIN)}.json"
    before = path.read_bytes()

    # The rename fails (as if the process died just before it): the old file stays, the
    # state in memory too, and the temp file is gone.
    def no_rename(source: object, target: object) -> None:
        raise OSError("crashed before the rename")

    with WitnessState.open(tmp_path) as witness:
        monkeypatch.setattr(os, "replace", no_rename)
        with pytest.raises(OSError, match="crashed"):
            await witness.record(state(9))
        monkeypatch.undo()
        assert witness.latest(ORIGIN) == state(5)
    assert path.read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    # A process killed after writing its temp file leaves it behind: it is not state.
    stray = tmp_path / f".{path.name}.0123456789abcdef.tmp"
    stray.write_bytes(state(9).encode())
    (tmp_path / "notes.txt").write_text("not state either\n")
    with WitnessState.open(tmp_path) as witness:
        assert witness.latest(ORIGIN) == state(5)


async def test_the_state_never_goes_back(tmp_path: Path) -> None:
    with WitnessState.open(tmp_path) as witness:
        await witness.record(state(0))
        await witness.record(state(5))
        await witness.record(state(5))  # the same checkpoint again
        with pytest.raises(StateError):
            await witness.record(state(4))
        with pytest.raises(StateError):
            await witness.record(state(5, root=b"f" * 32))
        assert witness.latest(ORIGIN) == state(5)
    with WitnessState.open(tmp_path) as witness:
        assert witness.latest(ORIGIN) == state(5)
        assert witness.latest("other") is None


def test_one_witness_per_directory_and_unreadable_state_stops_it(tmp_path: Path) -> None:
    with WitnessState.open(tmp_path), pytest.raises(StateError, match="another witness"):
        with WitnessState.open(tmp_path):
            pass
    with WitnessState.open(tmp_path):  # released when the first closed
        pass

    path = tmp_path / f"{origin_hash(ORIGIN)}.json"
    path.write_text("{not json")
    with pytest.raises(StateError, match="cannot read"), WitnessState.open(tmp_path):
        pass
    path.unlink()
    (tmp_path / f"{origin_hash('other')}.json").write_bytes(state(3).encode())
    with pytest.raises(StateError, match="another log"), WitnessState.open(tmp_path):
        pass


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory of another user")
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    with pytest.raises(StateError, match="not a directory owned by this user"):
        with WitnessState.open(other):
            pass
