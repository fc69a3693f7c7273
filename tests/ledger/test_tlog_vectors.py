"""Golden vectors and properties of app.ledger.tlog: RFC 9162 tree heads and proofs, the
right-edge frontier, stored hash positions and C2SP tlog-tiles addressing.

Where the vectors come from:
- LEAF_INPUTS, NODE_HASHES, ROOTS, FRONTIERS: transparency-dev/merkle testonly/constants.go
  (LeafInputs, NodeHashes, RootHashes, CompactTrees), the RFC 6962 test tree of
  certificate-transparency.
- INCLUSION_PROOFS, CONSISTENCY_PROOFS: transparency-dev/merkle cmd/proofgen/main.go (there the
  leaf indexes count from 1; here from 0).
- vectors/rfc6962_probes.json: transparency-dev/merkle testdata/inclusion and
  testdata/consistency, copied unchanged (the commit is named in the file): a happy path and its
  mutations (bit flips, wrong sizes, garbage around the proof) with the verdict each should get.
- Tile paths: C2SP tlog-tiles (the 1234067 example, the sizes 70,000 and 256) and
  transparency-dev/tessera api/layout/paths_test.go.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.merkle import leaf_hash
from app.ledger.tlog import (
    EMPTY_FRONTIER,
    EMPTY_ROOT,
    TILE_HEIGHT,
    Frontier,
    ProofError,
    SubtreeHashes,
    Tile,
    append_leaves,
    append_leaves_by_level,
    consistency_proof,
    entries_path,
    frontier_at,
    frontier_root,
    hash_from_tile,
    inclusion_proof,
    new_tiles,
    parse_tile_path,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    tile_hashes,
    tile_span,
    tiles_for_size,
    tree_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from tests.strategies import FEW, MODERATE

h = bytes.fromhex

LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# NODE_HASHES[level][index]: every complete subtree of the 8-leaf tree.
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# ROOTS[n]: the head of the tree of the first n leaves.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

N = NODE_HASHES
# FRONTIERS[n]: the compact range [0, n), as CompactTrees lists it.
FRONTIERS: list[list[bytes]] = [
    [],
    [N[0][0]],
    [N[1][0]],
    [N[1][0], N[0][2]],
    [N[2][0]],
    [N[2][0], N[0][4]],
    [N[2][0], N[1][2]],
    [N[2][0], N[1][2], N[0][6]],
    [N[3][0]],
]

# (leaf index, tree size, proof)
INCLUSION_PROOFS: list[tuple[int, int, list[bytes]]] = [
    (0, 1, []),
    (0, 8, [N[0][1], N[1][1], N[2][1]]),
    (5, 8, [N[0][4], N[1][3], N[2][0]]),
    (2, 3, [N[1][0]]),
    (1, 5, [N[0][0], N[1][1], N[0][4]]),
]

# (old size, new size, proof)
CONSISTENCY_PROOFS: list[tuple[int, int, list[bytes]]] = [
    (1, 1, []),
    (1, 8, [N[0][1], N[1][1], N[2][1]]),
    (6, 8, [N[1][2], N[1][3], N[2][0]]),
    (2, 5, [N[1][1], N[0][4]]),
    (6, 7, [N[1][2], N[0][6], N[2][0]]),
]

LEAF_HASHES = [leaf_hash(data) for data in LEAF_INPUTS]


def golden_store(level: int, index: int) -> bytes:
    """SubtreeHashes answered from the published node table, not from our own tree."""
    return NODE_HASHES[level][index]


# -- RFC 6962 test tree -------------------------------------------------------------------------


def test_leaf_hashes_and_every_complete_subtree_match_the_table() -> None:
    assert LEAF_HASHES == NODE_HASHES[0]
    _, created = append_leaves(EMPTY_FRONTIER, LEAF_HASHES)
    table = {(node.level, node.index): node.hash for node in created}
    expected = {(lv, i): v for lv, row in enumerate(NODE_HASHES) for i, v in enumerate(row)}
    assert table == expected


@pytest.mark.parametrize("size", range(9))
def test_tree_head_of_every_size(size: int) -> None:
    assert tree_hash(LEAF_HASHES[:size]) == ROOTS[size]
    assert tree_root(size, golden_store) == ROOTS[size]
    frontier, _ = append_leaves(EMPTY_FRONTIER, LEAF_HASHES[:size])
    assert list(frontier.hashes) == FRONTIERS[size]
    assert frontier_root(frontier) == ROOTS[size]
    assert frontier_at(size, golden_store) == frontier


def test_empty_tree_head_is_the_hash_of_nothing() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]
    assert frontier_root(EMPTY_FRONTIER) == EMPTY_ROOT


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_proof_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(index, size, golden_store) == proof
    verify_inclusion(index, size, LEAF_HASHES[index], proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_PROOFS)
def test_consistency_proof_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(old, new, golden_store) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize("size", range(1, 9))
def test_every_inclusion_and_consistency_proof_up_to_eight_leaves(size: int) -> None:
    for index in range(size):
        proof = inclusion_proof(index, size, golden_store)
        verify_inclusion(index, size, LEAF_HASHES[index], proof, ROOTS[size])
        for other in {*range(size)} - {index}:
            with pytest.raises(ProofError):
                verify_inclusion(other, size, LEAF_HASHES[other], proof, ROOTS[size])
    for old in range(1, size + 1):
        proof = consistency_proof(old, size, golden_store)
        verify_consistency(old, size, ROOTS[old], ROOTS[size], proof)
        for wrong in {*range(1, size + 1)} - {old}:
            with pytest.raises(ProofError):
                verify_consistency(wrong, size, ROOTS[wrong], ROOTS[size], proof)


PROBES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc6962_probes.json").read_text()
)

# transparency-dev/merkle checks no hash lengths in a consistency proof of equal sizes: it takes
# two equal 12-byte "roots" as consistent. We refuse any root that is not 32 bytes.
STRICTER_THAN_PROBES = {"additional/sizes-are-equal-one-and-proof-is-empty.json"}


def b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def accepts(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except ProofError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(PROBES["inclusion"]))
def test_inclusion_probes(name: str) -> None:
    p = PROBES["inclusion"][name]
    proof = [b64(x) for x in p["proof"] or []]
    verdict = accepts(
        verify_inclusion, p["leafIdx"], p["treeSize"], b64(p["leafHash"]), proof, b64(p["root"])
    )
    assert verdict is not p["wantErr"], p["desc"]


@pytest.mark.parametrize("name", sorted(PROBES["consistency"]))
def test_consistency_probes(name: str) -> None:
    p = PROBES["consistency"][name]
    proof = [b64(x) for x in p["proof"] or []]
    verdict = accepts(
        verify_consistency, p["size1"], p["size2"], b64(p["root1"]), b64(p["root2"]), proof
    )
    want = not p["wantErr"] and name not in STRICTER_THAN_PROBES
    assert verdict is want, p["desc"]


def test_probes_were_read() -> None:
    assert len(PROBES["inclusion"]) == len(PROBES["consistency"]) == 98


# -- stored hash positions ----------------------------------------------------------------------

# The order in which an 8-leaf tree's hashes come into being: each leaf, then what it completes.
STORED_ORDER = [
    (0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0),
    (0, 4), (0, 5), (1, 2), (0, 6), (0, 7), (1, 3), (2, 1), (3, 0),
]  # fmt: skip


def test_stored_hash_positions_of_eight_leaves() -> None:
    assert [stored_hash_index(lv, i) for lv, i in STORED_ORDER] == list(range(15))
    assert [split_stored_hash_index(x) for x in range(15)] == STORED_ORDER
    assert [stored_hash_count(n) for n in range(9)] == [0, 1, 3, 4, 7, 8, 10, 11, 15]
    _, created = append_leaves(EMPTY_FRONTIER, LEAF_HASHES)
    assert [(node.level, node.index) for node in created] == STORED_ORDER


def test_split_stored_hash_index_inverts_it() -> None:
    # golang.org/x/mod/sumdb/tlog TestSplitStoredHashIndex: levels below 10, indexes below 100.
    for level in range(10):
        for index in range(100):
            assert split_stored_hash_index(stored_hash_index(level, index)) == (level, index)
    big = stored_hash_index(40, 2**20 + 3)
    assert split_stored_hash_index(big) == (40, 2**20 + 3)


# -- tile paths ---------------------------------------------------------------------------------

TILE_PATHS = [
    ("tile/0/x001/x234/067", Tile(0, 1234067)),  # the C2SP tlog-tiles example
    ("tile/0/000", Tile(0, 0)),
    ("tile/0/000.p/255", Tile(0, 0, 255)),
    ("tile/1/000", Tile(1, 0)),
    ("tile/15/x455/667", Tile(15, 455667)),
    ("tile/15/x123/x456/789.p/41", Tile(15, 123456789, 41)),
    ("tile/0/x001/x234/067.p/89", Tile(0, 1234067, 89)),
    ("tile/63/x999/x999/x999/x999/x999/999.p/255", Tile(63, 999999999999999999, 255)),
    ("tile/0/001", Tile(0, 1)),
]

BAD_TILE_PATHS = [
    "tile/0/x001/x234/067.p/",
    "tile/0/x001/x234/067.p",
    "tile/0/x001/x234/",
    "tile/0/x001/x234",
    "tile/0/x001/",
    "tile/0/x001",
    "tile/1/x001/.p/abc",
    "tile/64/x001/002",
    "tile/-1/x001/002",
    "tile/abc/x001/002",
    "tile/8/001/002",
    "tile/8/x001/0002",
    "tile/8/x001/-002",
    "tile/8/x001/002.p/256",
    "tile/8/x001/002.p/0",
    "tile/8/x001/002.p/07",
    "tile/63/x999/x999/x999/x999/x999/x999/999.p/255",
    "tile/01/000",
    "tile/0/x000/001",
    "tile/0/1",
    "tile/0/000/",
    "/tile/0/000",
]


@pytest.mark.parametrize(("path", "tile"), TILE_PATHS)
def test_tile_paths(path: str, tile: Tile) -> None:
    assert tile.path == path
    assert parse_tile_path(path) == (tile, False)


@pytest.mark.parametrize("path", BAD_TILE_PATHS)
def test_malformed_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_path(path)


def test_entry_bundle_paths() -> None:
    # tessera TestEntriesPath and TestEntriesPathForLogIndex.
    assert entries_path(0) == "tile/entries/000"
    assert entries_path(0, 8) == "tile/entries/000.p/8"
    assert entries_path(255, 253) == "tile/entries/255.p/253"
    assert entries_path(123456789) == "tile/entries/x123/x456/789"
    assert parse_tile_path("tile/entries/001.p/1") == (Tile(0, 1, 1), True)


def test_tiles_of_the_specs_example_sizes() -> None:
    # C2SP tlog-tiles: 70,000 leaves are 273 full level 0 tiles, a partial one of width 112,
    # one full level 1 tile, a partial one of width 17 and a partial level 2 tile of width 1.
    tiles = list(tiles_for_size(70_000))
    assert tiles == [
        *(Tile(0, i) for i in range(273)),
        Tile(0, 273, 112),
        Tile(1, 0),
        Tile(1, 1, 17),
        Tile(2, 0, 1),
    ]
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1
    # tile of width 1"
    assert list(tiles_for_size(256)) == [Tile(0, 0), Tile(1, 0, 1)]
    assert list(tiles_for_size(0)) == []


# -- properties ---------------------------------------------------------------------------------


def leaves_of(seed: int, size: int) -> list[bytes]:
    """Distinct leaf hashes, derived from a seed so that large trees are cheap to draw."""
    return [leaf_hash(seed.to_bytes(8, "big") + i.to_bytes(8, "big")) for i in range(size)]


def store_of(leaves: list[bytes]) -> SubtreeHashes:
    _, created = append_leaves(EMPTY_FRONTIER, leaves)
    table = {(node.level, node.index): node.hash for node in created}
    return lambda level, index: table[(level, index)]


def flip(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


@st.composite
def trees_and_positions(draw: st.DrawFn, max_size: int = 600) -> tuple[int, int, int]:
    """A log (its seed), a tree size and a position below it (a leaf or an older size)."""
    size = draw(st.integers(1, max_size))
    return draw(st.integers(0, 2**32)), size, draw(st.integers(0, size - 1))


@MODERATE
@given(trees_and_positions(), st.integers(0, 2**16), st.integers(1, 600))
def test_inclusion_proofs_verify_and_nothing_altered_does(
    tree: tuple[int, int, int], bit: int, other_size: int
) -> None:
    seed, size, index = tree
    leaves = leaves_of(seed, size)
    store = store_of(leaves)
    root = tree_hash(leaves)
    assert tree_root(size, store) == root
    proof = inclusion_proof(index, size, store)
    verify_inclusion(index, size, leaves[index], proof, root)
    altered = [
        (index, size, flip(leaves[index], bit), proof, root),
        (index, size, leaves[index], proof, flip(root, bit)),
        (index, size, leaves[index], [*proof, root], root),
        *(
            (index, size, leaves[index], [*proof[:k], flip(p, bit), *proof[k + 1 :]], root)
            for k, p in enumerate(proof)
        ),
    ]
    if proof:
        altered.append((index, size, leaves[index], proof[:-1], root))
    # Another leaf, or the real head of this log at another size, with this proof.
    other = (index + bit) % size
    if other != index:
        altered.append((other, size, leaves[other], proof, root))
    if other_size != size and index < other_size:
        other_root = tree_hash(leaves_of(seed, other_size))
        altered.append((index, other_size, leaves[index], proof, other_root))
    for case in altered:
        assert not accepts(verify_inclusion, *case), case[:2]


@MODERATE
@given(trees_and_positions(), st.integers(0, 2**16), st.integers(1, 600))
def test_consistency_proofs_verify_and_nothing_altered_does(
    tree: tuple[int, int, int], bit: int, wrong_size: int
) -> None:
    seed, size, old = tree
    leaves, old = leaves_of(seed, size), old + 1
    store = store_of(leaves)
    old_root, root = tree_hash(leaves[:old]), tree_hash(leaves)
    proof = consistency_proof(old, size, store)
    verify_consistency(old, size, old_root, root, proof)
    altered = [
        (old, size, flip(old_root, bit), root, proof),
        (old, size, old_root, flip(root, bit), proof),
        *(
            (old, size, old_root, root, [*proof[:k], flip(p, bit), *proof[k + 1 :]])
            for k, p in enumerate(proof)
        ),
    ]
    if proof:
        altered += [
            (old, size, old_root, root, proof[:-1]),
            (old, size, old_root, root, [*proof, root]),
        ]
    # The real heads of this log at other sizes, with this proof.
    wrong_root = tree_hash(leaves_of(seed, wrong_size))
    if old < size and wrong_size not in (old, size):
        if wrong_size < size:
            altered.append((wrong_size, size, wrong_root, root, proof))
        if wrong_size > old:
            altered.append((old, wrong_size, old_root, wrong_root, proof))
    for case in altered:
        assert not accepts(verify_consistency, *case), case[:2]


@MODERATE
@given(st.integers(0, 2**32), st.lists(st.integers(0, 300), max_size=6))
def test_appending_in_batches_gives_the_head_of_all_leaves(seed: int, batches: list[int]) -> None:
    leaves = leaves_of(seed, sum(batches))
    frontier: Frontier = EMPTY_FRONTIER
    stored: list[tuple[int, int]] = []
    done = 0
    for batch in batches:
        before = frontier.size
        frontier, created = append_leaves(frontier, leaves[done : done + batch])
        done += batch
        assert frontier.size == done
        assert len(frontier.hashes) <= done.bit_length()
        assert frontier_root(frontier) == tree_hash(leaves[:done])
        # The created nodes are the next stored hashes, in their order.
        assert len(created) == stored_hash_count(done) - stored_hash_count(before)
        positions = [stored_hash_index(node.level, node.index) for node in created]
        assert positions == list(range(stored_hash_count(before), stored_hash_count(done)))
        stored += [(node.level, node.index) for node in created]
    assert frontier_at(done, store_of(leaves)) == frontier


@MODERATE
@given(
    st.integers(0, 2**32),
    st.lists(st.integers(0, 600), max_size=6),
    st.sampled_from([1, 2, 3, TILE_HEIGHT]),
)
def test_appending_by_level_gives_what_append_leaves_gives(
    seed: int, batches: list[int], step: int
) -> None:
    leaves = leaves_of(seed, sum(batches))
    frontier: Frontier = EMPTY_FRONTIER
    done = 0
    for batch in batches:
        expected, created = append_leaves(frontier, leaves[done : done + batch])
        frontier, kept = append_leaves_by_level(frontier, leaves[done : done + batch], step)
        done += batch
        assert frontier == expected
        # The created nodes on levels 0, step, 2 * step, ...: per level, in index order.
        levels: dict[int, tuple[int, bytes]] = {}
        for node in created:
            if not node.level % step:
                first, hashes = levels.get(node.level, (node.index, b""))
                levels[node.level] = (first, hashes + node.hash)
        assert kept == [(level, *levels[level]) for level in sorted(levels)]


def test_appending_by_level_refuses_a_leaf_hash_of_another_size() -> None:
    with pytest.raises(ValueError, match="31 bytes"):
        append_leaves_by_level(EMPTY_FRONTIER, [b"\x00" * 32, b"\x00" * 31])


@FEW
@given(trees_and_positions(max_size=2000))
def test_tiles_answer_every_stored_hash_and_the_same_proofs(
    tree: tuple[int, int, int],
) -> None:
    seed, size, index = tree
    leaves = leaves_of(seed, size)
    _, created = append_leaves(EMPTY_FRONTIER, leaves)
    store = store_of(leaves)
    tiles = {(t.level, t.index): tile_hashes(t, store) for t in tiles_for_size(size)}

    def from_tiles(level: int, node_index: int) -> bytes:
        tile, start, end = tile_span(level, node_index)
        data = tiles[(tile.level, tile.index)]
        assert len(data) >= tile.width * 32
        return hash_from_tile(data, start, end)

    for node in created:
        assert from_tiles(node.level, node.index) == node.hash
    assert inclusion_proof(index, size, from_tiles) == inclusion_proof(index, size, store)
    assert consistency_proof(index + 1, size, from_tiles) == consistency_proof(
        index + 1, size, store
    )


@MODERATE
@given(st.integers(0, 2**20), st.integers(0, 2**12))
def test_new_tiles_are_those_the_smaller_tree_lacks(old: int, grow: int) -> None:
    new = old + grow
    assert set(new_tiles(old, new)) == set(tiles_for_size(new)) - set(tiles_for_size(old))
