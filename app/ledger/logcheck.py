"""Verification of a chain's transparency log: recompute it from the stored events in sealed
order and hold every entry's tree size, root and frontier, and the tiles, to it.

Checks, by the name a finding carries:
- log_size_mismatch: an entry's tree_size is not the one before plus its event count (only an
  entry sealed before the log, whose batch retention had pruned whole, may add nothing);
- log_root_mismatch: an entry's tree_root is not the root of the log recomputed to its size;
- log_frontier_mismatch: an entry's frontier is malformed, differs from the recomputed one, or
  (where the log cannot be recomputed) does not give the entry's tree_root;
- log_tile_mismatch: a tile does not hold exactly the recomputed hashes (changed, missing,
  extended or extra).

A batch whose leaves cannot all be read (pruned whole by retention, or an event missing, which
check_batch names) is taken up from the frontier its entry stored, provided that frontier gives
the entry's tree_root: later entries are checked from there, so one damaged batch is named once.
The comparisons of tiles are gathered as slices of recomputed hashes and made against the
database by the walk (app.ledger.verify), between the parts it hashes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ledger.logstore import unpack_frontier
from app.ledger.tlog import (
    EMPTY_FRONTIER,
    HASH_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    Frontier,
    append_leaves_by_level,
    frontier_root,
    tile_width,
)

TILE_BYTES = TILE_WIDTH * HASH_SIZE


@dataclass(frozen=True, slots=True)
class TileSlice:
    """Recomputed hashes [offset, offset + len(hashes) / 32) of tile (level, index); `whole`
    when they run to the tile's end (then the tile holds exactly 256 hashes)."""

    level: int
    index: int
    offset: int
    hashes: bytes

    @property
    def whole(self) -> bool:
        return self.offset * HASH_SIZE + len(self.hashes) == TILE_BYTES

    def mismatch(self, stored: bytes | None) -> str:
        """What is wrong with the stored tile ('' when it agrees)."""
        name = f"tile {self.level}/{self.index}"
        if stored is None:
            return f"{name} is missing"
        start = self.offset * HASH_SIZE
        if stored[start : start + len(self.hashes)] != self.hashes:
            last = self.offset + len(self.hashes) // HASH_SIZE
            return f"{name} differs in hashes {self.offset}..{last - 1}"
        if self.whole and len(stored) != TILE_BYTES:
            return f"{name} holds {len(stored)} bytes, not {TILE_BYTES}"
        return ""


@dataclass(slots=True)
class LogCheck:
    """The log of one chain recomputed along a walk. `frontier` None: unknown from here until
    an entry's stored frontier holds together."""

    frontier: Frontier | None = EMPTY_FRONTIER
    # tile level -> (index at tree level 8 * level of its first hash, the hashes recomputed)
    runs: dict[int, tuple[int, bytearray]] = field(default_factory=dict)
    slices: list[TileSlice] = field(default_factory=list)

    @classmethod
    def after(cls, prev: Mapping[str, Any] | None) -> LogCheck:
        """Starting after entry `prev` (None: at the chain's start), from its stored frontier:
        a walk of part of a chain trusts it as far as the part before checked it."""
        if prev is None:
            return cls()
        try:
            frontier: Frontier | None = unpack_frontier(prev["tree_size"], prev["frontier"])
        except (TypeError, ValueError):
            frontier = None
        return cls(frontier)

    def check_entry(
        self, entry: Mapping[str, Any], leaves: Sequence[bytes] | None, pruned_whole: bool
    ) -> list[tuple[str, str]]:
        """Append the batch's leaf hashes (merkle.leaf_hash of its event hashes, in leaf order;
        None: not all known) and compare the entry's tree fields; returns the findings, (check,
        detail) each."""
        found: list[tuple[str, str]] = []
        root = bytes(entry["tree_root"])
        try:
            stored: Frontier | None = unpack_frontier(entry["tree_size"], entry["frontier"])
        except (TypeError, ValueError) as exc:
            stored = None
            found.append(("log_frontier_mismatch", str(exc)))
        computed = self._recompute(entry, leaves, pruned_whole, found)
        if computed is None:
            self.restart(stored if stored is not None and frontier_root(stored) == root else None)
            if self.frontier is None and stored is not None:
                found.append(("log_frontier_mismatch", "the frontier does not give the tree root"))
            return found
        if frontier_root(computed) != root:
            found.append(("log_root_mismatch", "the log's root at this size differs"))
        self.frontier = computed
        if stored is not None and stored != computed:
            found.append(("log_frontier_mismatch", "the frontier differs from the log's"))
            if frontier_root(stored) == root:
                self.restart(stored)  # the stored state holds together: go on from it
        return found

    def _recompute(
        self,
        entry: Mapping[str, Any],
        leaves: Sequence[bytes] | None,
        pruned_whole: bool,
        found: list[tuple[str, str]],
    ) -> Frontier | None:
        """The log after the entry's batch (None: it cannot be recomputed here)."""
        base = self.frontier
        if base is None:
            return None
        size, count = entry["tree_size"], entry["event_count"]
        if size == base.size and pruned_whole and (entry.get("head_version") or 1) == 1:
            return base  # pruned whole before the log: its hashes were gone
        if size - base.size != count:
            detail = f"tree size {size} after {base.size}, {count} events"
            found.append(("log_size_mismatch", detail))
            return None
        return None if leaves is None else self._append(base, leaves)

    def _append(self, base: Frontier, leaves: Sequence[bytes]) -> Frontier:
        frontier, levels = append_leaves_by_level(base, leaves, TILE_HEIGHT)
        for level, first, hashes in levels:
            self._extend(level // TILE_HEIGHT, first, hashes)
        return frontier

    def _extend(self, level: int, index: int, hashes: bytes) -> None:
        run = self.runs.get(level)
        if run is None:
            self.runs[level] = (index, bytearray(hashes))
        else:
            run[1].extend(hashes)

    def restart(self, frontier: Frontier | None) -> None:
        """Go on from `frontier` (None: unknown): what was recomputed so far is compared."""
        self.take_slices(final=True)
        self.runs.clear()
        self.frontier = frontier

    def take_slices(self, final: bool) -> list[TileSlice]:
        """Move the recomputed hashes of every tile they complete (with `final`, all of them)
        to `slices`; returns `slices`."""
        for level, (first, hashes) in list(self.runs.items()):
            count = len(hashes) // HASH_SIZE
            done = count if final else max(0, count - (first + count) % TILE_WIDTH)
            index = first
            while index < first + done:
                end = min(first + done, (index // TILE_WIDTH + 1) * TILE_WIDTH)
                part = bytes(hashes[(index - first) * HASH_SIZE : (end - first) * HASH_SIZE])
                self.slices.append(TileSlice(level, index // TILE_WIDTH, index % TILE_WIDTH, part))
                index = end
            if done == count:
                del self.runs[level]
            else:
                self.runs[level] = (first + done, bytearray(hashes[done * HASH_SIZE :]))
        return self.slices


def tile_extent_findings(size: int, extents: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The tiles a chain holds, per level (tiles, last_idx, last_bytes), against a log of
    `size` leaves: as many tiles as it has, the last one as wide as it is, no level more."""
    found: list[tuple[str, str]] = []
    for extent in extents:
        level = extent["level"]
        count = size >> (TILE_HEIGHT * level)
        tiles = -(-count // TILE_WIDTH)
        if extent["tiles"] != tiles or extent["last_idx"] != tiles - 1:
            found.append(
                ("log_tile_mismatch", f"level {level} has {extent['tiles']} tiles, the log {tiles}")
            )
            continue
        width = tile_width(level, tiles - 1, size)
        if extent["last_bytes"] != width * HASH_SIZE:
            found.append(
                (
                    "log_tile_mismatch",
                    f"tile {level}/{tiles - 1} holds {extent['last_bytes']} bytes, "
                    f"the log {width * HASH_SIZE}",
                )
            )
    levels = {e["level"] for e in extents}
    level = 0
    while size >> (TILE_HEIGHT * level):
        if level not in levels:
            found.append(("log_tile_mismatch", f"no tiles of level {level}"))
        level += 1
    return found
