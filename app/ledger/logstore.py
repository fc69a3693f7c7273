"""Each chain's transparency log as PostgreSQL keeps it: C2SP tlog-tiles rows and the frontier
of the newest ledger entry.

A batch appends its events' leaf hashes (app.ledger.merkle.leaf_hash of each event hash, in leaf
order) to its chain's log; the frontier of the entry before it is all that takes (app.ledger.tlog
append_leaves). The hashes it completes on tile levels (tree levels 0, 8, 16, ...) go to
audit_log_tiles by appending to the tiles' bytes, one statement for the batch, without reading
them. A proof names the subtree hashes it needs, the tiles holding those are read in one query,
and the proof is answered from them (O(log n) hashes read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg

from app.ledger.sql import LOG_TILE, LOG_TILES_AT, NEWEST_SIZE
from app.ledger.tlog import (
    EMPTY_FRONTIER,
    HASH_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    Frontier,
    StoredNode,
    SubtreeHashes,
    consistency_proof,
    hash_from_tile,
    inclusion_proof,
    parse_tile_path,
    tile_span,
    tile_width,
    tree_root,
)

# A frontier holds one hash per set bit of the size: 63 bits of bigint, so at most 63 * 32 bytes.
MAX_FRONTIER_BYTES = 64 * HASH_SIZE


def pack_frontier(frontier: Frontier) -> bytes:
    """The peaks, largest subtree first, concatenated (audit_ledger.frontier)."""
    return b"".join(frontier.hashes)


def unpack_frontier(size: int, packed: bytes | None) -> Frontier:
    """The frontier of a tree of `size` leaves from its stored bytes; ValueError when they do
    not hold one hash per set bit of size."""
    data = bytes(packed or b"")
    if len(data) % HASH_SIZE or len(data) > MAX_FRONTIER_BYTES:
        raise ValueError(f"a frontier of {len(data)} bytes is not a list of hashes")
    if size == 0 and not data:
        return EMPTY_FRONTIER
    return Frontier(size, tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)))


@dataclass(frozen=True, slots=True)
class TileAppends:
    """What a batch adds to the tiles: for each tile touched, the bytes to append to it, in
    arrays for one INSERT .. SELECT FROM unnest(...)."""

    levels: list[int]
    indexes: list[int]
    hashes: list[bytes]


def tile_appends(nodes: Iterable[StoredNode]) -> TileAppends:
    """Group the nodes `append_leaves` completed that lie on a tile level by tile, each tile's
    hashes in index order (the order append_leaves gives them)."""
    grouped: dict[tuple[int, int], list[bytes]] = {}
    for node in nodes:
        if node.level % TILE_HEIGHT == 0:
            key = (node.level // TILE_HEIGHT, node.index // TILE_WIDTH)
            grouped.setdefault(key, []).append(node.hash)
    keys = sorted(grouped)
    return TileAppends(
        [k[0] for k in keys], [k[1] for k in keys], [b"".join(grouped[k]) for k in keys]
    )


class MissingTile(LookupError):
    """The tiles do not hold a hash a proof needs (the log is shorter than its entries say)."""


def _needed(ask: Callable[[SubtreeHashes], object]) -> set[tuple[int, int]]:
    """The (level, index) subtree hashes `ask` reads, found by a dry run on dummy hashes."""
    pairs: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> bytes:
        pairs.add((level, index))
        return bytes(HASH_SIZE)

    ask(record)
    return pairs


async def answered(
    conn: asyncpg.Connection, chain: int, ask: Callable[[SubtreeHashes], Any]
) -> Any:
    """Run `ask` (a tlog proof or root computation) against the stored tiles of `chain`: the
    tiles it needs are read in one query."""
    return (await answered_all(conn, chain, [ask]))[0]


async def answered_all(
    conn: asyncpg.Connection, chain: int, asks: Sequence[Callable[[SubtreeHashes], Any]]
) -> list[Any]:
    """Run each of `asks` against the stored tiles of `chain`, the tiles all of them need read
    in one query."""
    spans = {pair: tile_span(*pair) for ask in asks for pair in _needed(ask)}
    tiles = {(t.level, t.index) for t, _, _ in spans.values()}
    rows = (
        await conn.fetch(LOG_TILES_AT, chain, [t[0] for t in tiles], [t[1] for t in tiles])
        if tiles
        else []
    )
    data = {(r["level"], r["idx"]): bytes(r["hashes"]) for r in rows}
    known: dict[tuple[int, int], bytes] = {}  # asks to one size share most of their subtrees

    def stored(level: int, index: int) -> bytes:
        found = known.get((level, index))
        if found is not None:
            return found
        tile, start, end = spans[(level, index)]
        content = data.get((tile.level, tile.index), b"")
        if len(content) < end * HASH_SIZE:
            raise MissingTile(f"tile {tile.level}/{tile.index} of chain {chain} is too short")
        found = known[(level, index)] = hash_from_tile(content, start, end)
        return found

    return [ask(stored) for ask in asks]


async def log_inclusion_proof(
    conn: asyncpg.Connection, chain: int, index: int, size: int
) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf `index` in the chain's tree of `size` leaves."""
    proof: list[bytes] = await answered(conn, chain, lambda h: inclusion_proof(index, size, h))
    return proof


async def log_consistency_proof(
    conn: asyncpg.Connection, chain: int, old_size: int, new_size: int
) -> list[bytes]:
    """RFC 9162 consistency proof between the chain's trees of `old_size` and `new_size`."""
    proof: list[bytes] = await answered(
        conn, chain, lambda h: consistency_proof(old_size, new_size, h)
    )
    return proof


async def log_consistency_proofs(
    conn: asyncpg.Connection, chain: int, old_sizes: Sequence[int], new_size: int
) -> list[list[bytes]]:
    """RFC 9162 consistency proofs from each of the chain's trees of `old_sizes` leaves to the
    one of `new_size`, their tiles read in one query (a bundle's entries to its checkpoint)."""
    asks = [partial(consistency_proof, old, new_size) for old in old_sizes]
    return await answered_all(conn, chain, asks)


async def log_root(conn: asyncpg.Connection, chain: int, size: int) -> bytes:
    """MTH of the chain's first `size` leaves, from its tiles."""
    root: bytes = await answered(conn, chain, lambda h: tree_root(size, h))
    return root


async def read_tile(
    conn: asyncpg.Connection, chain: int, level: int, index: int, size: int
) -> bytes | None:
    """The content of tile (level, index) in the chain's tree of `size` leaves (None: the tree
    does not have it): no more hashes than the tree of that size has, even when the row has
    grown past it since."""
    width = tile_width(level, index, size)
    if width == 0:
        return None
    stored = await conn.fetchval(LOG_TILE, chain, level, index)
    if stored is None or len(stored) < width * HASH_SIZE:
        raise MissingTile(f"tile {level}/{index} of chain {chain} is too short")
    return bytes(stored[: width * HASH_SIZE])


class LogRangeError(ValueError):
    """Sizes or a tile the chain's log does not have; `size` is its current size."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


async def newest_size(conn: asyncpg.Connection, chain: int) -> int:
    """The tree size of the chain's newest entry (0: no entries)."""
    return int(await conn.fetchval(NEWEST_SIZE, chain) or 0)


async def consistency_between(
    conn: asyncpg.Connection, chain: int, old_size: int, new_size: int
) -> dict[str, Any]:
    """The RFC 9162 consistency proof from the chain's tree of `old_size` leaves to the one of
    `new_size`, with both roots (hex), for 0 < old_size <= new_size <= the newest entry's
    size. Raises LogRangeError otherwise."""
    size = await newest_size(conn, chain)
    if not 0 < old_size <= new_size <= size:
        raise LogRangeError(
            f"sizes must satisfy 0 < old <= new <= {size}, the log's size (chain {chain})", size
        )
    proof = await log_consistency_proof(conn, chain, old_size, new_size)
    return {
        "chain": chain,
        "old_size": old_size,
        "new_size": new_size,
        "old_root": (await log_root(conn, chain, old_size)).hex(),
        "new_root": (await log_root(conn, chain, new_size)).hex(),
        "proof": [h.hex() for h in proof],
    }


async def tile_content(conn: asyncpg.Connection, chain: int, path: str) -> bytes:
    """The bytes of `path` (tile/<L>/<N>[.p/<W>], C2SP tlog-tiles) in the chain's log: a full
    tile once the log has all its 256 hashes, a partial one of width W once it has W. Raises
    LogRangeError for a path the log does not have (or that is not a tile path)."""
    size = await newest_size(conn, chain)
    try:
        tile, entries = parse_tile_path(path)
    except ValueError as exc:
        raise LogRangeError(str(exc), size) from exc
    if entries:
        raise LogRangeError("this log serves no entry bundles", size)
    if tile_width(tile.level, tile.index, size) < tile.width:
        raise LogRangeError(f"the log of size {size} does not have {tile.path}", size)
    content = await read_tile(conn, chain, tile.level, tile.index, size)
    return (content or b"")[: tile.width * HASH_SIZE]


def leaf_position(entry: Any, leaf_index: int) -> int:
    """The log position of leaf `leaf_index` of the batch sealed as `entry`: the batch's events
    are the last event_count leaves of the tree of the entry's size."""
    return int(entry["tree_size"]) - int(entry["event_count"]) + leaf_index
