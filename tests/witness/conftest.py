"""Test logs built with app.ledger.tlog (leaf hashes of made-up event hashes) and signed with
app.ledger.notes, and witnesses served by uvicorn on loopback sockets of their own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.ledger.merkle import leaf_hash
from app.ledger.notes import (
    ED25519,
    Checkpoint,
    VerifierKey,
    public_key_of,
    sign_checkpoint,
)
from app.ledger.tlog import consistency_proof, tree_hash
from app.ledger.witnessing import Witness
from app.local.servers import free_port
from app.witness.config import WitnessConfig, WitnessIdentity, load_identity
from app.witness.server import WitnessMetrics, create_app

START_WITHIN_S = 10.0
STOP_WITHIN_S = 10.0


@dataclass
class Log:
    """A log's tree over leaf hashes of made-up event hashes, and its Ed25519 note key."""

    origin: str
    leaves: list[bytes]
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @classmethod
    def make(cls, origin: str, size: int = 32, *, seed: str = "") -> Log:
        events = (
            hashlib.sha256(f"{seed or origin} event {i}".encode()).digest() for i in range(size)
        )
        return cls(origin, [leaf_hash(e) for e in events])

    def forked_at(self, index: int) -> Log:
        """The same log (same key) with leaf `index` and after it different."""
        other = Log.make(self.origin, len(self.leaves), seed=f"fork of {self.origin}")
        return Log(self.origin, self.leaves[:index] + other.leaves[index:], self.key)

    @property
    def vkey(self) -> VerifierKey:
        return VerifierKey(self.origin, ED25519, public_key_of(self.key))

    def root(self, size: int) -> bytes:
        return tree_hash(self.leaves[:size])

    def checkpoint(self, size: int, root: bytes | None = None) -> str:
        head = Checkpoint(self.origin, size, self.root(size) if root is None else root)
        return sign_checkpoint(head, self.origin, self.key)

    def subtree(self, level: int, index: int) -> bytes:
        return tree_hash(self.leaves[index << level : (index + 1) << level])

    def proof(self, old_size: int, new_size: int) -> list[bytes]:
        return consistency_proof(old_size, new_size, self.subtree)


@dataclass
class RunningWitness:
    url: str
    identity: WitnessIdentity
    metrics: WitnessMetrics
    directory: Path

    @property
    def witness(self) -> Witness:
        return Witness(self.url, self.identity.verifier_key)

    def refusals(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "audit_witness_refusals_total", {"reason": reason}
        )
        return value or 0.0

    async def post(self, body: bytes) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.post(self.url + "/add-checkpoint", content=body)


@contextlib.asynccontextmanager
async def running_witness(
    directory: Path,
    logs: Sequence[Log] | Mapping[str, tuple[VerifierKey, ...]],
    *,
    name: str = "witness.test/w1",
) -> AsyncIterator[RunningWitness]:
    """The witness app under uvicorn on a loopback socket bound here (no port race), its
    lifespan running; stopped (lifespan shut down, state directory unlocked) afterwards. `logs`:
    test logs, or origin -> note keys."""
    identity = load_identity(directory, name, "")
    known = logs if isinstance(logs, Mapping) else {log.origin: (log.vkey,) for log in logs}
    config = WitnessConfig(identity, dict(known), directory)
    metrics = WitnessMetrics.create()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, metrics=metrics), log_config=None, access_log=False, lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while not server.started:
            assert not task.done(), "the witness did not start"
            assert time.monotonic() < deadline, "the witness did not start in time"
            await asyncio.sleep(0.01)
        yield RunningWitness(f"http://127.0.0.1:{port}", identity, metrics, directory)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_WITHIN_S)
        sock.close()


def unused_url() -> str:
    """A loopback URL nobody listens on: a witness that is down."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def log() -> Log:
    return Log.make("audit.test/log")
