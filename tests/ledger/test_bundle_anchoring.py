"""Offline bundles anchored to a cosigned checkpoint: `export-bundle` writes the chain's newest
checkpoint cosigned by a quorum, the log's and the witnesses' keys and a consistency proof from
each bundled entry's tree to it.

Each test runs the service over a database of its own with a real witness (test_anchoring's
`witnessed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.conftest import SettingsFactory, wait_stored
from tests.ledger.test_anchoring import Witnessed, cli, witnessed

WIDE = ("--start", "2000-01-01T00:00:00Z", "--end", "2100-01-01T00:00:00Z")


def read_bundle(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [next(iter(orjson.loads(line).items())) for line in path.read_bytes().splitlines()]


def of_kind(lines: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [value for k, value in lines if k == kind]


async def sealed_batches(w: Witnessed, sizes: list[int], total: int = 0) -> None:
    """One batch each (each waited for) after `total` events, then the tree size cosigned."""
    for size in sizes:
        await w.send(size)
        total += size
        await wait_stored(w.settings.database_url, w.org, total)
    await w.cosigned_size(total)


def export(w: Witnessed, out: Path, env: dict[str, str] | None = None) -> Path:
    made = cli({**w.env(), **(env or {})}, "export-bundle", *WIDE, "--org", w.org, str(out))
    assert made.returncode == 0, made.stdout + made.stderr
    return out


async def test_a_witnessed_bundle_carries_its_anchor(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await sealed_batches(w, [3, 4, 5])
        bundle = export(w, tmp_path / "bundle.ndjson")
    lines = read_bundle(bundle)
    header = of_kind(lines, "bundle")[0]
    assert header["kind"] == "audit-bundle-v2"
    [checkpoint] = of_kind(lines, "checkpoint")
    vkey = w.witness.identity.vkey
    assert checkpoint["chain"] == 0 and checkpoint["note"].split("\n")[1] == "12"
    assert f"\u2014 {w.witness.identity.name} " in checkpoint["note"]  # with its cosignature
    assert of_kind(lines, "witnesses") == [{"quorum": 1, "vkeys": [vkey]}]
    [log_keys] = of_kind(lines, "log_keys")
    assert log_keys["chain"] == 0 and len(log_keys["vkeys"]) == 1
    proofs = {p["seq"]: p for p in of_kind(lines, "consistency")}
    assert {s: (p["old_size"], p["new_size"]) for s, p in proofs.items()} == {
        1: (3, 12),
        2: (7, 12),
        3: (12, 12),
    }
    assert proofs[3]["proof"] == [] and proofs[1]["proof"]
