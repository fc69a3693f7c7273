"""The witness over real HTTP on loopback, asked by app.ledger.witnessing: cosigning a growing
log, refusing rollbacks, forks, bad proofs and strangers (also after a restart), the 409
exchange, and a quorum of witnesses with some down."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.notes import (
    NoteSignature,
    VerifierKey,
    cosign,
    cosignature_timestamp,
    cosigned_by,
    open_checkpoint,
    open_note,
    public_key_of,
)
from app.ledger.tlog import EMPTY_ROOT
from app.ledger.witnessing import (
    MAX_REQUEST_BYTES,
    TLOG_SIZE_TYPE,
    Witness,
    WitnessRefused,
    add_checkpoint,
    format_add_checkpoint,
    gather,
)
from app.witness.state import origin_hash
from tests.witness.conftest import Log, RunningWitness, running_witness, unused_url


def no_proof(old_size: int) -> list[bytes]:
    raise AssertionError(f"no proof should be needed (asked from {old_size})")


async def cosign_sequence(
    witness: RunningWitness, log: Log, sizes: list[int], old: int = 0
) -> list[str]:
    """Has the witness cosign checkpoints of these sizes in turn; each cosigned note."""
    notes = []
    async with httpx.AsyncClient(timeout=5) as client:
        for size in sizes:
            note = log.checkpoint(size)
            proof_from = functools.partial(log.proof, new_size=size)
            cosigned = await add_checkpoint(client, witness.witness, note, old, proof_from)
            assert cosigned.old_size == old
            notes.append(note + cosigned.signature.line)
            old = size
    return notes


async def test_a_growing_log_is_cosigned_and_each_cosignature_verifies(
    tmp_path: Path, log: Log
) -> None:
    async with running_witness(tmp_path, [log]) as witness:
        notes = await cosign_sequence(witness, log, [0, 5, 12, 12])
        wkey = witness.identity.verifier_key
        for note, size in zip(notes, [0, 5, 12, 12], strict=True):
            checkpoint, opened = open_checkpoint(note, log.origin, [log.vkey])
            assert checkpoint.size == size and checkpoint.root_hash == log.root(size)
            [cosignature] = cosigned_by(open_note(note, [log.vkey, wkey]), [wkey])
            assert cosignature.name == "witness.test/w1"
            assert cosignature_timestamp(cosignature) > 1_700_000_000
        assert witness.metrics.registry.get_sample_value("audit_witness_cosignatures_total") == 4

        # Monitors get the latest cosigned checkpoint, with the log's signature and the
        # witness's cosignature.
        async with httpx.AsyncClient(timeout=5) as client:
            served = await client.get(f"{witness.url}/{origin_hash(log.origin)}/checkpoint")
            unknown = await client.get(f"{witness.url}/{origin_hash('other')}/checkpoint")
        assert served.status_code == 200 and unknown.status_code == 404
        opened = open_note(served.text, [log.vkey, wkey])
        assert opened.text == log.checkpoint(12).split("\n\n")[0] + "\n"
        assert len(opened.verified) == 2

    state = json.loads((tmp_path / f"{origin_hash(log.origin)}.json").read_text())
    assert state["size"] == 12
    assert base64.b64decode(state["root_hash"]) == log.root(12)


async def test_rollback_fork_and_bad_proof_are_refused_even_after_a_restart(
    tmp_path: Path, log: Log
) -> None:
    forked = log.forked_at(7)  # same key, leaves 7.. differ: same root up to 7, not at 12
    rollback = format_add_checkpoint(12, [], log.checkpoint(5))
    replay = format_add_checkpoint(5, [], log.checkpoint(5))  # an old one, sent again
    fork = format_add_checkpoint(12, [], forked.checkpoint(12))
    bad_proof = format_add_checkpoint(12, forked.proof(12, 20), forked.checkpoint(20))
    state_file = tmp_path / f"{origin_hash(log.origin)}.json"

    async def refuse_all(witness: RunningWitness) -> None:
        before = {r: witness.refusals(r) for r in ("rollback", "fork", "bad_proof", "conflict")}
        answer = await witness.post(rollback)
        assert answer.status_code == 400 and "above the size" in answer.text
        answer = await witness.post(replay)
        assert answer.status_code == 409 and answer.content == b"12\n"
        assert answer.headers["content-type"] == TLOG_SIZE_TYPE
        answer = await witness.post(fork)
        assert answer.status_code == 422 and "was cosigned at that size" in answer.text
        answer = await witness.post(bad_proof)
        assert answer.status_code == 422 and "no consistency" in answer.text
        counted = {r: witness.refusals(r) - n for r, n in before.items()}
        assert counted == {"rollback": 2, "fork": 1, "bad_proof": 1, "conflict": 0}

    async with running_witness(tmp_path, [log]) as witness:
        await cosign_sequence(witness, log, [0, 12])
        before = state_file.read_bytes()
        await refuse_all(witness)
        await refuse_all(witness)  # a fork stays refused
        assert state_file.read_bytes() == before

    async with running_witness(tmp_path, [log]) as witness:  # state read back from disk
        await refuse_all(witness)
        assert state_file.read_bytes() == before
        # The honest log goes on from where it was.
        await cosign_sequence(witness, log, [20], old=12)
        answer = await witness.post(fork)
        assert answer.status_code == 409 and answer.content == b"20\n"


async def test_a_stale_old_size_gets_409_and_the_client_retries_from_the_witness_size(
    tmp_path: Path, log: Log
) -> None:
    asked: list[int] = []

    async def proof_from(old_size: int) -> list[bytes]:
        asked.append(old_size)
        return log.proof(old_size, 12)

    async with running_witness(tmp_path, [log]) as witness:
        await cosign_sequence(witness, log, [5])
        answer = await witness.post(format_add_checkpoint(0, [], log.checkpoint(12)))
        assert answer.status_code == 409 and answer.content == b"5\n"
        assert answer.headers["content-type"] == TLOG_SIZE_TYPE

        async with httpx.AsyncClient(timeout=5) as client:
            cosigned = await add_checkpoint(
                client, witness.witness, log.checkpoint(12), 0, proof_from
            )
            assert asked == [5] and cosigned.old_size == 5
            assert witness.refusals("conflict") == 2

            # A witness that has cosigned a larger tree: no proof can help, no retry.
            with pytest.raises(WitnessRefused, match="larger than this checkpoint's 5"):
                await add_checkpoint(client, witness.witness, log.checkpoint(5), 0, no_proof)
            assert witness.refusals("rollback") == 1


async def test_two_requests_from_the_same_size_cannot_both_be_cosigned(
    tmp_path: Path, log: Log
) -> None:
    """The spec's race: the check against the recorded size and the update are one step, so
    of two requests from size 5 at once only one is cosigned; the other gets 409."""
    async with running_witness(tmp_path, [log]) as witness:
        await cosign_sequence(witness, log, [5])
        for _ in range(5):
            recorded = witness.refusals("conflict") + witness.refusals("rollback")
            old = int(
                json.loads((tmp_path / f"{origin_hash(log.origin)}.json").read_text())["size"]
            )
            answers = await asyncio.gather(
                witness.post(
                    format_add_checkpoint(old, log.proof(old, old + 2), log.checkpoint(old + 2))
                ),
                witness.post(
                    format_add_checkpoint(old, log.proof(old, old + 3), log.checkpoint(old + 3))
                ),
            )
            assert sorted(a.status_code for a in answers) == [200, 409]
            assert witness.refusals("conflict") + witness.refusals("rollback") == recorded + 1


async def test_strangers_and_malformed_requests_are_refused(tmp_path: Path, log: Log) -> None:
    impostor = Log(log.origin, log.leaves)  # the same origin, another key
    stranger = Log.make("other.test/log")
    empty_with_root = log.checkpoint(0, root=log.root(3))
    async with running_witness(tmp_path, [log]) as witness:
        cases = [
            (format_add_checkpoint(0, [], impostor.checkpoint(5)), 403, "bad_signature"),
            (format_add_checkpoint(0, [], stranger.checkpoint(5)), 404, "unknown_log"),
            (b"old 0\n" + log.checkpoint(5).encode(), 400, "malformed"),
            (b"old 01\n\n" + log.checkpoint(5).encode(), 400, "malformed"),
            (format_add_checkpoint(0, [], "not a note\n"), 400, "malformed"),
            (format_add_checkpoint(6, [], log.checkpoint(5)), 400, "malformed"),
            (format_add_checkpoint(0, [], empty_with_root), 422, "malformed"),
            (format_add_checkpoint(0, log.proof(3, 5), log.checkpoint(5)), 422, "bad_proof"),
            (b"x" * (MAX_REQUEST_BYTES + 1), 413, "too_large"),
        ]
        for body, status, reason in cases:
            before = witness.refusals(reason)
            answer = await witness.post(body)
            assert answer.status_code == status, (reason, answer.text)
            assert answer.text.endswith("\n") and len(answer.text) < 400
            assert witness.refusals(reason) == before + 1, reason

        # A note whose signature by the log's key (name and key ID match) fails: 403.
        note = log.checkpoint(5)
        text, signature = note.split("\n\n")
        tampered = text.replace("\n5\n", "\n6\n") + "\n\n" + signature
        answer = await witness.post(format_add_checkpoint(0, [], tampered))
        assert answer.status_code == 403 and "invalid signature" in answer.text

        # None of it changed the state: the log starts from 0.
        await cosign_sequence(witness, log, [0])
        assert EMPTY_ROOT == log.root(0)

        async with httpx.AsyncClient(timeout=5) as client:
            metrics = await client.get(witness.url + "/metrics")
            health = await client.get(witness.url + "/healthz")
        assert 'audit_witness_refusals_total{reason="unknown_log"} 1.0' in metrics.text
        assert health.status_code == 200


async def test_gather_reaches_a_quorum_of_three_with_one_down_not_with_two(
    tmp_path: Path, log: Log
) -> None:
    note = log.checkpoint(12)
    async with (
        running_witness(tmp_path / "a", [log], name="witness.test/a") as a,
        running_witness(tmp_path / "b", [log], name="witness.test/b") as b,
    ):
        down = Witness(unused_url(), VerifierKey("witness.test/down", 0x04, bytes(32)))
        gathered = await gather(
            [a.witness, b.witness, down], 2, note, lambda old: log.proof(old, 12), timeout_s=5
        )
        assert gathered.reached and len(gathered.cosignatures) == 2
        assert list(gathered.failures) == [down]
        assert "ConnectError" in gathered.failures[down]
        keys = [a.identity.verifier_key, b.identity.verifier_key, down.key]
        cosigned = open_note(gathered.cosigned_note(note), [log.vkey, *keys])
        assert {s.name for s in cosigned_by(cosigned, keys)} == {"witness.test/a", "witness.test/b"}

        # b is down now too (a stranger at its address would be no better: wrong key).
        held: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # reads the request, never answers

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        hanging = Witness(f"http://127.0.0.1:{port}", b.identity.verifier_key)
        async with silent:
            gathered = await gather(
                [a.witness, hanging, down],
                2,
                log.checkpoint(20),
                lambda old: log.proof(old, 20),
                old_sizes={a.witness: 12},
                timeout_s=0.5,
            )
        for writer in held:
            writer.close()
            await writer.wait_closed()
        assert not gathered.reached and len(gathered.cosignatures) == 1
        assert gathered.failures[hanging] == "no answer within 0.5 s"
        assert "ConnectError" in gathered.failures[down]


WITNESS = "witness.test/w1"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("another key of the same name", "no signature from a known key"),
        ("a signature that fails", "invalid signature"),
        ("no timestamp", "has no timestamp"),
        ("not a signature line", "signature line"),
        ("oversize", "answer over 65536 bytes"),
        ("a 409 of another type", "HTTP 409: a 409 answer of type 'text/plain'"),
        ("a 500", "HTTP 500: out of disk"),
    ],
)
async def test_the_client_refuses_an_answer_it_cannot_verify(
    log: Log, answer: str, why: str
) -> None:
    """Answers made up here (with httpx's mock transport): the client's checks of them."""
    key = Ed25519PrivateKey.generate()
    witness = Witness("http://witness.test", VerifierKey(WITNESS, 0x04, public_key_of(key)))
    note = log.checkpoint(5)
    text = note.split("\n\n")[0] + "\n"
    good = cosign(text, WITNESS, key, 1_800_000_000)
    forged = NoteSignature(
        WITNESS, good.key_id, good.signature[:-1] + bytes([good.signature[-1] ^ 1])
    )
    stranger = cosign(text, WITNESS, Ed25519PrivateKey.generate(), 1_800_000_000)
    body = {
        "another key of the same name": stranger.line,
        "a signature that fails": forged.line,
        "no timestamp": cosign(text, WITNESS, key, 0).line,
        "not a signature line": "\u2014" + WITNESS + "\n",
        "oversize": good.line * 1000,
        "a 409 of another type": "5\n",
        "a 500": "out of disk\n",
    }[answer]
    status = {"a 409 of another type": 409, "a 500": 500}.get(answer, 200)
    reply = httpx.Response(status, text=body, headers={"content-type": "text/plain"})
    transport = httpx.MockTransport(lambda request: reply)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(WitnessRefused) as refused:
            await add_checkpoint(client, witness, note, 0, no_proof)
    assert why in refused.value.reason
