"""A transparency log's Merkle tree (RFC 9162 section 2.1) and its tiles (C2SP tlog-tiles).

Pure functions over leaf hashes (`merkle.leaf_hash` of an entry): the tree head, inclusion and
consistency proofs and their verification, the right-edge frontier a writer appends to, and the
addressing of stored hashes and tiles.

Proof generation does not take the leaves. It takes a `SubtreeHashes` function that answers the
hash of any complete subtree, named by its level (height; 0 for a leaf) and its index at that
level: the subtree over leaves [index * 2**level, (index + 1) * 2**level). A store of nodes or
of tiles answers that with one lookup, so a proof costs O(log n) lookups and no leaf reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from app.ledger.merkle import NODE_PREFIX, node_hash

HASH_SIZE = 32

# MTH({}) of RFC 9162 section 2.1.1: the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

# C2SP tlog-tiles: a full tile holds 256 hashes, so it spans 8 levels of the tree.
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_TILE_LEVEL = 63

# (level, index) -> MTH of the complete subtree over leaves [index << level, (index+1) << level).
SubtreeHashes = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof is malformed or does not lead to the hash it should."""


def _split(n: int) -> int:
    """k of RFC 9162 section 2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


# -- tree heads ---------------------------------------------------------------------------------


def tree_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1 over the leaf hashes, by its recursive definition
    (split at the largest power of two smaller than n); EMPTY_ROOT for no leaves."""
    if not leaf_hashes:
        return EMPTY_ROOT

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hashes[lo]
        mid = lo + _split(hi - lo)
        return node_hash(mth(lo, mid), mth(mid, hi))

    return mth(0, len(leaf_hashes))


def _fold(roots: Sequence[bytes]) -> bytes:
    """The hash of complete subtrees side by side, largest (leftmost) first: each one is the
    left child of the node above the ones to its right (RFC 9162 2.1.1's split, unrolled)."""
    root = roots[-1]
    for left in reversed(roots[:-1]):
        root = node_hash(left, root)
    return root


def range_hash(start: int, end: int, subtree_hashes: SubtreeHashes) -> bytes:
    """MTH(D[start:end]) for a node of the tree (RFC 9162 2.1.1): `start` a multiple of the
    largest power of two not above end - start. Asks for the complete subtrees it is made of,
    at most one per bit of end - start."""
    size = end - start
    if size <= 0:
        raise ValueError("a subtree needs at least one leaf")
    if start % (1 << (size.bit_length() - 1)):
        raise ValueError(f"D[{start}:{end}] is not a node of the tree")
    roots: list[bytes] = []
    while size:
        level = size.bit_length() - 1
        roots.append(subtree_hashes(level, start >> level))
        start += 1 << level
        size -= 1 << level
    return _fold(roots)


def tree_root(size: int, subtree_hashes: SubtreeHashes) -> bytes:
    """MTH(D[size]) from stored subtree hashes: one lookup per set bit of size."""
    if size < 0:
        raise ValueError("tree size is negative")
    return range_hash(0, size, subtree_hashes) if size else EMPTY_ROOT


# -- inclusion proofs (RFC 9162 2.1.3) ---------------------------------------------------------


def inclusion_proof(index: int, size: int, subtree_hashes: SubtreeHashes) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, leaf sibling first. Every sibling is a
    complete subtree except those on the right edge, which together cost at most one lookup
    per bit of size: O(log n) lookups in all."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    lo, hi = 0, size
    path: list[bytes] = []
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(range_hash(mid, hi, subtree_hashes))
            hi = mid
        else:
            path.append(range_hash(lo, mid, subtree_hashes))
            lo = mid
    path.reverse()
    return path


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to, by the algorithm of RFC 9162 section 2.1.3.2;
    ProofError when the proof cannot belong to (index, size)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_hash(leaf_hash, "leaf hash")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        _check_hash(p, "proof hash")
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2: raises ProofError unless the proof shows the leaf hash at
    `index` in the tree of `size` leaves whose head is `root`."""
    _check_hash(root, "root hash")
    if root_from_inclusion_proof(index, size, leaf_hash, proof) != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root")


# -- consistency proofs (RFC 9162 2.1.4) -------------------------------------------------------


def consistency_proof(old_size: int, new_size: int, subtree_hashes: SubtreeHashes) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) of RFC 9162 section 2.1.4.1, for
    0 < m <= n (empty when m == n, as transparency-dev/merkle and the witness protocol have
    it). O(log n) lookups."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    lo, hi = 0, new_size
    whole = True  # SUBPROOF's b: is D[lo:hi] still the old tree's own head?
    path: list[bytes] = []
    while old_size != hi:
        mid = lo + _split(hi - lo)
        if old_size <= mid:
            path.append(range_hash(mid, hi, subtree_hashes))
            hi = mid
        else:
            path.append(range_hash(lo, mid, subtree_hashes))
            lo, whole = mid, False
    if not whole:
        path.append(range_hash(lo, hi, subtree_hashes))
    path.reverse()
    return path


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: raises ProofError unless the proof shows the tree of
    `old_size` leaves with head `old_root` is a prefix of the one of `new_size` with head
    `new_root`. Equal sizes need an empty proof and equal roots. A proof from the empty tree
    proves nothing and is refused: a caller that accepts old size 0 (a witness's first
    checkpoint of a log) checks that case itself."""
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for p in proof:
        _check_hash(p, "proof hash")
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("the sizes are equal but the proof is not empty")
        if old_root != new_root:
            raise ProofError("the sizes are equal but the roots differ")
        return
    old, new = _roots_from_consistency_proof(old_size, new_size, old_root, proof)
    if old != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if new != new_root:
        raise ProofError("consistency proof does not lead to the new root")


def _roots_from_consistency_proof(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """Steps 1 to 6 of RFC 9162 section 2.1.4.2 and the check on sn of step 7: (fr, sr)."""
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    return fr, sr


# -- the right-edge frontier (compact range [0, size)) ------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredNode:
    """The hash of a complete subtree: level 0 is a leaf hash."""

    level: int
    index: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Frontier:
    """The roots of the complete subtrees a tree of `size` leaves splits into, left (largest)
    to right: one per set bit of size, so at most log2(size) + 1 hashes. They are all a
    writer needs to append leaves and compute the new head."""

    size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.hashes) != self.size.bit_count():
            raise ValueError(f"a tree of size {self.size} has {self.size.bit_count()} peaks")
        for h in self.hashes:
            _check_hash(h, "frontier hash")


EMPTY_FRONTIER = Frontier(0, ())


def frontier_root(frontier: Frontier) -> bytes:
    """MTH(D[size]) of RFC 9162 section 2.1.1 from the frontier alone."""
    return _fold(frontier.hashes) if frontier.hashes else EMPTY_ROOT


def frontier_at(size: int, subtree_hashes: SubtreeHashes) -> Frontier:
    """The frontier of the tree of `size` leaves, read from stored subtree hashes."""
    if size < 0:
        raise ValueError("tree size is negative")
    hashes: list[bytes] = []
    start = 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            hashes.append(subtree_hashes(level, start >> level))
            start += 1 << level
    return Frontier(size, tuple(hashes))


def append_leaves(
    frontier: Frontier, leaf_hashes: Sequence[bytes]
) -> tuple[Frontier, list[StoredNode]]:
    """Appends leaf hashes to the tree the frontier stands for, in O(len + log size). Returns
    the new frontier and every complete subtree the leaves completed, each leaf hash then the
    nodes it closed, in the order of `stored_hash_index` (so a store can write them as they
    come and later answer `SubtreeHashes` for any proof)."""
    size, peaks = frontier.size, list(frontier.hashes)
    created: list[StoredNode] = []
    for leaf in leaf_hashes:
        _check_hash(leaf, "leaf hash")
        created.append(StoredNode(0, size, leaf))
        h, level = leaf, 0
        # Each trailing one bit of the old size is a peak of the same height to merge with.
        while size >> level & 1:
            h = node_hash(peaks.pop(), h)
            level += 1
            created.append(StoredNode(level, size >> level, h))
        peaks.append(h)
        size += 1
    return Frontier(size, tuple(peaks)), created


def append_leaves_by_level(
    frontier: Frontier, leaf_hashes: Sequence[bytes], step: int = TILE_HEIGHT
) -> tuple[Frontier, list[tuple[int, int, bytes]]]:
    """append_leaves computed a tree level at a time: the same new frontier, and of the
    subtrees the leaves completed only those on tree levels 0, step, 2 * step, ... (the tile
    levels), as (level, index of the first, their hashes joined in index order). One pass over
    each level and no object per node: for a verifier that refolds a whole log."""
    size = frontier.size
    end = size + len(leaf_hashes)
    old = dict(zip(_set_bits(size), frontier.hashes, strict=True))
    peaks: dict[int, bytes] = {}
    kept: list[tuple[int, int, bytes]] = []
    sha = hashlib.sha256
    run, first, level = list(leaf_hashes), size, 0
    joined = b"".join(run)
    if len(joined) != HASH_SIZE * len(run):
        for leaf in run:
            _check_hash(leaf, "leaf hash")
    while run:
        if not level % step:
            kept.append((level, first, joined if level == 0 else b"".join(run)))
        if first & 1:  # the first new node's left sibling is the old peak of this level
            run.insert(0, old[level])
            first -= 1
        if len(run) & 1:  # an unpaired last node is the new peak of this level
            peaks[level] = run[-1]
        run = [sha(NODE_PREFIX + run[i] + run[i + 1]).digest() for i in range(0, len(run) - 1, 2)]
        first >>= 1
        level += 1
    # Above the last level that got a node, end and size agree: those peaks are unchanged.
    peaks.update((high, old[high]) for high in _set_bits(end) if high >= level)
    return Frontier(end, tuple(peaks[high] for high in _set_bits(end))), kept


def _set_bits(size: int) -> list[int]:
    """The levels of the peaks of a tree of `size` leaves, highest first (Frontier's order)."""
    return [level for level in reversed(range(size.bit_length())) if size >> level & 1]


# -- stored hash index (Crosby and Wallach, as golang.org/x/mod/sumdb/tlog numbers hashes) -----


def stored_hash_count(size: int) -> int:
    """How many complete-subtree hashes a tree of `size` leaves has: 2n - popcount(n)."""
    if size < 0:
        raise ValueError("tree size is negative")
    return 2 * size - size.bit_count()


def stored_hash_index(level: int, index: int) -> int:
    """Position of the hash of complete subtree (level, index) in the order hashes come into
    being as leaves are appended: each leaf hash, then the subtrees it completes, lowest first.
    The subtree's last leaf m = ((index + 1) << level) - 1 comes after 2m - popcount(m)
    hashes, and the subtree is `level` hashes after that leaf."""
    if level < 0 or index < 0:
        raise ValueError("level and index must not be negative")
    last = ((index + 1) << level) - 1
    return stored_hash_count(last) + level


def split_stored_hash_index(position: int) -> tuple[int, int]:
    """(level, index) of the hash at `position`: the inverse of stored_hash_index."""
    if position < 0:
        raise ValueError("position must not be negative")
    # The leaf whose hashes hold the position: the last n with 2n - popcount(n) <= position.
    # 2n - popcount(n) lies within 64 of 2n, so a few steps from position // 2 find it.
    leaf = position // 2
    while stored_hash_count(leaf) > position:
        leaf -= 1
    while stored_hash_count(leaf + 1) <= position:
        leaf += 1
    level = position - stored_hash_count(leaf)
    return level, leaf >> level


# -- tiles (C2SP tlog-tiles) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tile:
    """Tile `index` of tile level `level`: hashes index*256 .. index*256 + width - 1 of tree
    level 8 * level (leaf hashes at tile level 0). Width 256 is a full tile."""

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if not 0 <= self.level <= MAX_TILE_LEVEL:
            raise ValueError(f"tile level {self.level} is not within 0..{MAX_TILE_LEVEL}")
        if self.index < 0 or not 1 <= self.width <= TILE_WIDTH:
            raise ValueError(f"tile index {self.index} or width {self.width} is out of range")

    @property
    def path(self) -> str:
        """tile/<L>/<N>[.p/<W>] of C2SP tlog-tiles, section Merkle Tree."""
        return f"tile/{self.level}/{_index_path(self.index, self.width)}"


def _index_path(index: int, width: int) -> str:
    """<N>[.p/<W>]: N in 3-digit groups, all but the last prefixed with x (C2SP tlog-tiles)."""
    digits = f"{index:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    encoded = "/".join([f"x{g}" for g in groups[:-1]] + groups[-1:])
    return encoded if width == TILE_WIDTH else f"{encoded}.p/{width}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """tile/entries/<N>[.p/<W>]: the bundle of the log entries whose leaf hashes are level 0
    tile `index` (C2SP tlog-tiles, section Log entries)."""
    if index < 0 or not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"entry bundle index {index} or width {width} is out of range")
    return f"tile/entries/{_index_path(index, width)}"


# At most six groups: 999,999,999,999,999,999 < 2**63 (transparency-dev/tessera's bound).
_TILE_PATH = re.compile(
    r"tile/(?P<level>entries|0|[1-9][0-9]?)/"
    r"(?P<groups>(?:x[0-9]{3}/){0,5})(?P<last>[0-9]{3})(?:\.p/(?P<width>[1-9][0-9]{0,2}))?"
)


def parse_tile_path(path: str) -> tuple[Tile, bool]:
    """Strict parse of tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]: (tile, is_entries);
    an entry bundle comes back as a level 0 tile of the same index and width. ValueError for
    anything the spec does not spell, such as leading zeros, a width of 0 or 256, level 64."""
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"not a tile path: {path!r}")
    index = int(match["groups"].replace("x", "").replace("/", "") + match["last"])
    width = int(match["width"]) if match["width"] else TILE_WIDTH
    entries = match["level"] == "entries"
    tile = Tile(0 if entries else int(match["level"]), index, width)
    # One spelling per tile: no x000 group in front, no .p/256.
    if path.partition("/")[2].partition("/")[2] != _index_path(index, width) or (
        match["width"] and width == TILE_WIDTH
    ):
        raise ValueError(f"not the canonical path of its tile: {path!r}")
    return tile, entries


def tile_width(level: int, index: int, size: int) -> int:
    """How many hashes tile (level, index) holds in a tree of `size` leaves (0: none yet)."""
    count = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, count - index * TILE_WIDTH))


def tiles_for_size(size: int) -> Iterator[Tile]:
    """Every tile of a tree of `size` leaves, level by level, full ones then the partial one
    of width floor(size / 256**L) mod 256 (C2SP tlog-tiles, section Partial Tiles)."""
    level = 0
    while level <= MAX_TILE_LEVEL and size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        for index in range(count // TILE_WIDTH):
            yield Tile(level, index)
        if count % TILE_WIDTH:
            yield Tile(level, count // TILE_WIDTH, count % TILE_WIDTH)
        level += 1


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """The tiles of the tree at `new_size` that the tree at `old_size` did not have at that
    width: what a writer stores after appending, O((new - old) / 256 + levels) of them."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot grow from size {old_size} to {new_size}")
    tiles: list[Tile] = []
    level = 0
    while level <= MAX_TILE_LEVEL and new_size >> (TILE_HEIGHT * level):
        first = (old_size >> (TILE_HEIGHT * level)) // TILE_WIDTH
        last = ((new_size >> (TILE_HEIGHT * level)) - 1) // TILE_WIDTH
        for index in range(first, last + 1):
            width = tile_width(level, index, new_size)
            if width != tile_width(level, index, old_size):
                tiles.append(Tile(level, index, width))
        level += 1
    return tiles


def tile_hashes(tile: Tile, subtree_hashes: SubtreeHashes) -> bytes:
    """The content of a tile: its hashes of tree level 8 * L, concatenated."""
    level, first = TILE_HEIGHT * tile.level, tile.index * TILE_WIDTH
    return b"".join(subtree_hashes(level, first + i) for i in range(tile.width))


def tile_span(level: int, index: int) -> tuple[Tile, int, int]:
    """Where the hash of complete subtree (level, index) comes from in the tiles: it is the
    MTH of hashes [start, end) of the returned tile (of the least width that holds them);
    end - start = 2**(level mod 8), so a node on a tile level is a single hash."""
    if level < 0 or index < 0:
        raise ValueError("level and index must not be negative")
    below = level % TILE_HEIGHT
    first = index << below
    start = first % TILE_WIDTH
    end = start + (1 << below)
    return Tile(level // TILE_HEIGHT, first // TILE_WIDTH, end), start, end


def hash_from_tile(data: bytes, start: int, end: int) -> bytes:
    """MTH of hashes [start, end) of a tile's content (as `tile_span` names them)."""
    if not 0 <= start < end <= len(data) // HASH_SIZE or len(data) % HASH_SIZE:
        raise ValueError(f"tile of {len(data)} bytes has no hashes [{start}, {end})")
    hashes = [data[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(start, end)]
    return tree_hash(hashes)
