"""One ingest key cannot blow up the API's memory: the item count and the body's JSON values are
checked before any event is validated, at most 100 problems are listed (with a count of the
rest), and the peak RSS of a real `serve` process stays bounded whatever invalid body arrives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.config import Settings
from app.db import engine_scope
from loadtests.faults.servers import free_port
from tests.conftest import SettingsFactory, event

MIB = 1024 * 1024
RSS_LIMIT_KB = 256 * 1024
ANSWER_WITHIN_S = 2.0


@dataclass
class Served:
    url: str
    pid: int
    headers: dict[str, str]

    def peak_rss_kb(self) -> int:
        """The process's peak resident set (VmHWM) so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


@contextlib.contextmanager
def serve_process(settings: Settings, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_REDIS_URL": settings.redis_url,
        "AUDIT_SIGNING_KEYS": settings.signing_keys,
        "AUDIT_STREAM_PREFIX": settings.stream_prefix,
        "AUDIT_RUN_WRITERS": "false",
        "AUDIT_PORT": str(port),
        "AUDIT_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
async def served(settings_factory: SettingsFactory, org: str) -> AsyncIterator[Served]:
    settings = settings_factory()
    async with engine_scope(settings) as engine:
        _, key = await create_api_key(engine, org, ["ingest"], "bounds")
    port = free_port()
    with serve_process(settings, port) as process:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/healthz")).status_code == 200:
                        break
                assert process.poll() is None, "serve exited"
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.1)
        yield Served(url, process.pid, {"Authorization": f"Bearer {key}"})


def _post(served: Served, path: str, body: bytes) -> tuple[httpx.Response, float]:
    headers = {**served.headers, "Content-Type": "application/json"}
    started = time.monotonic()
    resp = httpx.post(served.url + path, content=body, headers=headers, timeout=60)
    return resp, time.monotonic() - started


def _keys(count: int, start: int = 0) -> bytes:
    return b",".join(b'"k%d":0' % i for i in range(start, start + count))


async def test_ten_mebibytes_of_empty_items_is_refused_at_once(served: Served) -> None:
    body = b"[" + b",".join([b"{}"] * (10 * MIB // 3 - 1)) + b"]"
    assert len(body) <= 10 * MIB
    resp, seconds = _post(served, "/events/bulk", body)
    assert resp.status_code == 413, resp.text[:300]
    assert len(resp.content) < 4096
    assert seconds < ANSWER_WITHIN_S
    assert served.peak_rss_kb() < RSS_LIMIT_KB


async def test_many_invalid_items_list_a_hundred_and_count_the_rest(served: Served) -> None:
    # 10,000 items, each with 40 unknown fields and none of the required ones: 430,000
    # problems; the answer lists 100 and says how many there are.
    item = b"{" + _keys(40) + b"}"
    body = b"[" + b",".join([item] * 10_000) + b"]"
    resp, seconds = _post(served, "/events/bulk", body)
    assert resp.status_code == 422, resp.text[:300]
    error = resp.json()["error"]
    assert len(error["details"]) == 100
    assert "430,000 problems in 10,000 events" in error["message"]
    assert {d["index"] for d in error["details"]} == {0, 1, 2}
    assert seconds < ANSWER_WITHIN_S
    assert served.peak_rss_kb() < RSS_LIMIT_KB


@pytest.mark.parametrize("path", ["/events", "/events/bulk"])
async def test_one_item_with_a_huge_number_of_fields_is_one_problem(
    served: Served, path: str
) -> None:
    fields = b"{" + b'"action":"a.b","status":"success","principal_id":"p",' + _keys(400_000) + b"}"
    body = fields if path == "/events" else b"[" + fields + b"]"
    assert 3 * MIB < len(body) < 10 * MIB
    resp, seconds = _post(served, path, body)
    assert resp.status_code == 422, resp.text[:300]
    details = resp.json()["error"]["details"]
    assert len(details) == 1 and details[0]["type"] == "too_many_fields", details
    assert seconds < ANSWER_WITHIN_S
    assert served.peak_rss_kb() < RSS_LIMIT_KB


async def test_too_many_json_values_answer_413(served: Served) -> None:
    body = (
        b"["
        + b",".join(
            [
                b'{"action":"a.b","status":"success","principal_id":"p",'
                b'"details":{"v":[' + b"0," * 120 + b"0]}}"
            ]
            * 5_000
        )
        + b"]"
    )
    resp, seconds = _post(served, "/events/bulk", body)
    assert resp.status_code == 413, resp.text[:300]
    assert "JSON values" in resp.json()["error"]["message"]
    assert seconds < ANSWER_WITHIN_S
    good = b"[" + b",".join([httpx.Request("POST", "/", json=event()).content] * 2_000) + b"]"
    accepted, _ = _post(served, "/events/bulk", good)
    assert accepted.status_code == 202, accepted.text[:300]
    assert served.peak_rss_kb() < RSS_LIMIT_KB
