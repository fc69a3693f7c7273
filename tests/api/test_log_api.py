"""The log over HTTP: an event's proof carries an RFC 9162 inclusion proof in its chain's log,
consistency proofs between recorded sizes verify, tiles are C2SP tlog-tiles bytes, and all of
it needs the `log` scope (the proof needs `read`, as before)."""

from __future__ import annotations

import asyncpg

from app.ledger.merkle import leaf_hash
from app.ledger.tlog import (
    Tile,
    tile_hashes,
    tiles_for_size,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import Service, SettingsFactory, event, running, wait_stored


async def _send(svc: Service, headers: dict[str, str], org: str, url: str, total: int) -> list[str]:
    """Several batches: each request's events stored before the next is sent; some ids."""
    sent, ids = 0, []
    for size in (5, 300, 7):
        resp = await svc.client.post("/events/bulk", json=[event()] * size, headers=headers)
        assert resp.status_code == 202, resp.text
        sent += size
        ids += resp.json()["event_ids"][:2]
        await wait_stored(url, org, sent)
    assert sent == total
    return ids


async def _leaves(url: str) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Chain 0's leaves in sealed order, and each entry's (tree_size, tree_root)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """SELECT a.hash FROM audit_log a JOIN audit_ledger l USING (batch_id)
               WHERE l.chain = 0 ORDER BY l.seq, a.leaf_index"""
        )
        entries = await conn.fetch(
            "SELECT tree_size, tree_root FROM audit_ledger WHERE chain = 0 ORDER BY seq"
        )
    finally:
        await conn.close()
    return [leaf_hash(bytes(r["hash"])) for r in rows], [
        (e["tree_size"], bytes(e["tree_root"])) for e in entries
    ]


async def test_proofs_consistency_and_tiles(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    settings = settings_factory()
    async with running(settings) as svc:
        headers = await svc.key(org)
        ids = await _send(svc, headers, org, database_url, 312)
        leaves, entries = await _leaves(database_url)
        size, root = entries[-1]
        assert size == len(leaves) and root == tree_hash(leaves)

        # Consistency between every two recorded sizes (and a size no entry recorded).
        # (the entries of these batches: the session's database holds other tests' too)
        sizes = [s for s, _ in entries[-4:]] + [1, size - 1]
        roots = {s: tree_hash(leaves[:s]) for s in sizes}
        for old in sizes:
            for new in sizes:
                if not old <= new:
                    continue
                resp = await svc.client.get(
                    "/log/0/consistency", params={"old": old, "new": new}, headers=headers
                )
                assert resp.status_code == 200, resp.text
                got = resp.json()
                assert got["old_root"] == roots[old].hex() and got["new_root"] == roots[new].hex()
                verify_consistency(
                    old, new, roots[old], roots[new], [bytes.fromhex(h) for h in got["proof"]]
                )
        for old, new in ((0, 1), (2, 1), (1, size + 1)):
            resp = await svc.client.get(
                "/log/0/consistency", params={"old": old, "new": new}, headers=headers
            )
            assert resp.status_code == 422, (old, new)
            assert resp.json()["error"]["code"] in {"invalid_range", "validation_failed"}

        # Tiles: exactly tile_hashes of the log, full and partial; nothing past the size.
        def subtree(level: int, index: int) -> bytes:
            return tree_hash(leaves[index << level : (index + 1) << level])

        for tile in [*tiles_for_size(size), Tile(0, 0, 3)]:
            resp = await svc.client.get(f"/log/0/{tile.path}", headers=headers)
            assert resp.status_code == 200, (tile.path, resp.text)
            assert resp.content == tile_hashes(tile, subtree)
            assert resp.headers["content-type"] == "application/octet-stream"
            assert resp.headers["cache-control"] == "no-store"
        last, width = divmod(size, 256)
        beyond = [Tile(0, last, width + 1).path, Tile(0, last + 1).path, Tile(1, last + 1).path]
        for path in (*beyond, "tile/0/1", "tile/entries/000"):
            resp = await svc.client.get(f"/log/0/{path}", headers=headers)
            assert resp.status_code == 404, path
            assert resp.json()["error"]["code"] == "not_found"

        # The event's proof: batch proof as before, and its place in the log.
        for event_id in ids:
            proof = await svc.client.get(f"/events/{event_id}/proof", headers=headers)
            body = proof.json()
            assert body["verification"] == {"verified": True, "problems": []}
            log = body["log"]
            assert log["tree_size"] >= size  # reading a proof is an audit event too
            verify_inclusion(
                log["leaf_index"],
                log["tree_size"],
                leaf_hash(bytes.fromhex(body["event_hash"])),
                [bytes.fromhex(h) for h in log["inclusion_proof"]],
                bytes.fromhex(log["tree_root"]),
            )
            assert leaves[log["leaf_index"]] == leaf_hash(bytes.fromhex(body["event_hash"]))
            assert log["ledger_entry"]["head_version"] == 3


async def test_log_routes_need_the_log_scope(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    async with running(settings_factory()) as svc:
        headers = await svc.key(org)
        resp = await svc.client.post("/events/bulk", json=[event()] * 3, headers=headers)
        assert resp.status_code == 202
        await wait_stored(database_url, org, 3)
        reader = await svc.key(org, ("read", "verify", "operator"))
        for path in ("/log/0/consistency?old=1&new=1", "/log/0/tile/0/000.p/1"):
            refused = await svc.client.get(path, headers=reader)
            assert refused.status_code == 403, path
            assert refused.json()["error"]["code"] == "forbidden"
            anonymous = await svc.client.get(path)
            assert anonymous.status_code == 401
        allowed = await svc.key(org, ("log",))
        resp = await svc.client.get("/log/0/consistency?old=1&new=1", headers=allowed)
        assert resp.status_code == 200 and resp.json()["proof"] == []
