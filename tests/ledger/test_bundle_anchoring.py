"""Offline bundles anchored to a cosigned checkpoint: `export-bundle` writes the chain's newest
checkpoint cosigned by a quorum, the log's and the witnesses' keys and a consistency proof from
each bundled entry's tree to it; `verify-bundle` checks them with nothing but the file (no
database), and names what an altered bundle breaks.

Each test runs the service over a database of its own with a real witness (test_anchoring's
`witnessed`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.bundle_anchor import PINNED_SOURCE
from app.ledger.notes import (
    COSIGNATURE_V1,
    VerifierKey,
    cosign,
    format_note,
    parse_note,
    public_key_of,
)
from app.ledger.signing import new_keypair
from tests.conftest import SettingsFactory, wait_stored
from tests.ledger.test_anchoring import Witnessed, cli, superuser, witnessed

WIDE = ("--start", "2000-01-01T00:00:00Z", "--end", "2100-01-01T00:00:00Z")


def offline(
    public_key: str, bundle: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """verify-bundle with no database: no AUDIT_* setting but `env`, the public key as an
    option."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env = {**clean, **(env or {}), "AUDIT_LOG_LEVEL": "WARNING"}
    command = ["verify-bundle", str(bundle), "--public-key", public_key, *args]
    return subprocess.run(
        [sys.executable, "-m", "app", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(orjson.loads(result.stdout.splitlines()[-1]))


def checks(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {orjson.loads(line)["check"] for line in result.stdout.splitlines()[:-1]}


def read_bundle(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [next(iter(orjson.loads(line).items())) for line in path.read_bytes().splitlines()]


def write_bundle(path: Path, lines: list[tuple[str, dict[str, Any]]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps({kind: value}) + b"\n" for kind, value in lines))
    return path


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


async def test_a_witnessed_bundle_verifies_anchored_with_no_database(
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
    public = w.settings.ledger_public_key

    # The service and its database are gone: the file and the public key are all it takes.
    checked = offline(public, bundle)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    final = summary(checked)
    assert final["verdict"] == "intact" and final["events"] == 12
    [anchor] = final["anchored"]
    assert anchor["size"] == 12 and anchor["seq"] == 3
    assert anchor["witnesses"] == [w.witness.identity.name]
    assert final["unanchored_chains"] == [] and final["unanchored_entries"] == []
    assert final["witness_keys"] == {"from": "bundle", "quorum": 1, "vkeys": [vkey]}
    assert "anchored to size 12" in checked.stderr
    assert vkey in checked.stderr and "compare" in checked.stderr

    pinned = offline(public, bundle, "--witnesses", vkey, "--quorum", "1")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert summary(pinned)["witness_keys"] == {"from": PINNED_SOURCE, "quorum": 1, "vkeys": [vkey]}
    assert "compare" not in pinned.stderr and vkey in pinned.stderr


async def test_entries_past_the_bundles_checkpoint_are_not_anchored(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """A bundle whose newest cosigned checkpoint is older than its last batch: the entries up to
    the checkpoint are anchored, the one past it is listed as not anchored (exit 3)."""
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await sealed_batches(w, [3])
        await sealed_batches(w, [4], total=3)
        await w.svc.app.state.resources.writers.stop()
        await superuser(
            w.conn,
            "DELETE FROM audit_checkpoint_cosignatures WHERE tree_size > 3",
            "DELETE FROM audit_checkpoints WHERE tree_size > 3",
        )
        (tmp_path / "none").mkdir()
        none = str(tmp_path / "none")  # only the database's copies, cut to size 3
        bundle = export(
            w, tmp_path / "bundle.ndjson", {"AUDIT_WITNESS_DIR": none, "AUDIT_CHECKPOINT_DIR": none}
        )
    lines = read_bundle(bundle)
    assert [c["note"].split("\n")[1] for c in of_kind(lines, "checkpoint")] == ["3"]
    assert [p["seq"] for p in of_kind(lines, "consistency")] == [1]
    checked = offline(w.settings.ledger_public_key, bundle)
    assert checked.returncode == 3, checked.stdout + checked.stderr
    final = summary(checked)
    assert final["verdict"] == "not anchored" and final["findings"] == 0
    assert [a["size"] for a in final["anchored"]] == [3]
    assert final["unanchored_chains"] == [0]
    assert final["unanchored_entries"] == [{"chain": 0, "from_seq": 2, "to_seq": 2}]
    assert "NOT ANCHORED" in checked.stderr


async def test_an_altered_bundle_names_what_broke(
    database_url: str, settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    async with witnessed(database_url, settings_factory, tmp_path) as w:
        await sealed_batches(w, [3, 4, 5])
        bundle = export(w, tmp_path / "bundle.ndjson")
    public = w.settings.ledger_public_key
    lines = read_bundle(bundle)

    def altered(name: str, change: Any) -> Path:
        copy = [(kind, orjson.loads(orjson.dumps(value))) for kind, value in lines]
        change(copy)
        return write_bundle(tmp_path / f"{name}.ndjson", copy)

    # The checkpoint's note names another entry than the one the log signed it for.
    def note(copy: list[tuple[str, dict[str, Any]]]) -> None:
        [checkpoint] = of_kind(copy, "checkpoint")
        assert "\nseq 3\n" in checkpoint["note"]
        checkpoint["note"] = checkpoint["note"].replace("\nseq 3\n", "\nseq 2\n")

    result = offline(public, altered("note", note))
    assert result.returncode == 1, result.stdout + result.stderr
    assert checks(result) == {"bundle_checkpoint_invalid"}
    assert summary(result)["verdict"] == "broken"

    # One hash of a consistency proof.
    def proof(copy: list[tuple[str, dict[str, Any]]]) -> None:
        first = next(p for p in of_kind(copy, "consistency") if p["seq"] == 1)
        first["proof"][0] = "00" * 32

    result = offline(public, altered("proof", proof))
    assert result.returncode == 1, result.stdout + result.stderr
    assert checks(result) == {"bundle_consistency_invalid"}

    # A ledger entry's tree root: its v2 head no longer recomputes, nor does its proof lead on.
    def root(copy: list[tuple[str, dict[str, Any]]]) -> None:
        entry = next(e for e in of_kind(copy, "ledger") if e["seq"] == 1)
        entry["tree_root"] = "11" * 32

    result = offline(public, altered("root", root))
    assert result.returncode == 1, result.stdout + result.stderr
    assert checks(result) == {"ledger_head_mismatch", "bundle_consistency_invalid"}

    # The auditor's public key is not the one the bundle names for the log.
    result = offline(new_keypair()[1], bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    assert {"bundle_log_key_mismatch", "bundle_checkpoint_invalid"} <= checks(result)

    # The witnesses swapped: the note's cosignature replaced by one of a key the bundle now
    # names. The bundle alone cannot tell (stderr names the key to compare); the auditor's
    # pinned witness keys can.
    forger = Ed25519PrivateKey.generate()
    forged_key = VerifierKey("witness.test/forged", COSIGNATURE_V1, public_key_of(forger))

    def witnesses(copy: list[tuple[str, dict[str, Any]]]) -> None:
        [checkpoint] = of_kind(copy, "checkpoint")
        text, signatures = parse_note(checkpoint["note"])
        logs = [s for s in signatures if s.name != w.witness.identity.name]
        forged = cosign(text, forged_key.name, forger, int(time.time()))
        checkpoint["note"] = format_note(text, [*logs, forged])
        of_kind(copy, "witnesses")[0]["vkeys"] = [forged_key.vkey]

    swapped = altered("witnesses", witnesses)
    trusting = offline(public, swapped)
    assert trusting.returncode == 0, trusting.stdout + trusting.stderr
    assert forged_key.vkey in trusting.stderr and "compare" in trusting.stderr
    result = offline(public, swapped, "--witnesses", w.witness.identity.vkey)
    assert result.returncode == 1, result.stdout + result.stderr
    assert checks(result) == {"bundle_checkpoint_unwitnessed"}
    assert summary(result)["witness_keys"]["vkeys"] == [w.witness.identity.vkey]
    # An auditor whose setup names the witnesses (AUDIT_WITNESSES) trusts those, not the
    # bundle's.
    configured = offline(
        public, swapped, env={"AUDIT_WITNESSES": f"http://w.test={w.witness.identity.vkey}"}
    )
    assert configured.returncode == 1, configured.stdout + configured.stderr
    assert checks(configured) == {"bundle_checkpoint_unwitnessed"}
