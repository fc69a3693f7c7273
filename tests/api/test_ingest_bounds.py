"""One ingest key cannot blow up the API's memory: the item count and the body's JSON values are
checked before any event is validated, at most 100 problems are listed (with a count of the
rest), and the peak RSS of a real `serve` process stays bounded whatever invalid body arrives."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from app.apikeys.keys import create_api_key
from app.core.db import engine_scope
from tests.conftest import SettingsFactory, event, key_row_mac
from tests.served import Served, served

MIB = 1024 * 1024
RSS_LIMIT_KB = 256 * 1024
ANSWER_WITHIN_S = 2.0


@pytest.fixture
async def bounded(settings_factory: SettingsFactory, org: str) -> AsyncIterator[Ingest]:
    settings = settings_factory()
    async with engine_scope(settings) as engine:
        _, key = await create_api_key(engine, org, ["ingest"], "bounds", key_row_mac(settings))
    async with served(settings, run_writers="false") as process:
        yield Ingest(process, {"Authorization": f"Bearer {key}"})


@dataclass
class Ingest:
    process: Served
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return self.process.url

    def peak_rss_kb(self) -> int:
        return self.process.peak_rss_kb()


def _post(bounded: Ingest, path: str, body: bytes) -> tuple[httpx.Response, float]:
    headers = {**bounded.headers, "Content-Type": "application/json"}
    started = time.monotonic()
    resp = httpx.post(bounded.url + path, content=body, headers=headers, timeout=60)
    return resp, time.monotonic() - started


def _keys(count: int, start: int = 0) -> bytes:
    return b",".join(b'"k%d":0' % i for i in range(start, start + count))


async def test_ten_mebibytes_of_empty_items_is_refused_at_once(bounded: Ingest) -> None:
    body = b"[" + b",".join([b"{}"] * (10 * MIB // 3 - 1)) + b"]"
    assert len(body) <= 10 * MIB
    resp, seconds = _post(bounded, "/events/bulk", body)
    assert resp.status_code == 413, resp.text[:300]
    assert len(resp.content) < 4096
    assert seconds < ANSWER_WITHIN_S
    assert bounded.peak_rss_kb() < RSS_LIMIT_KB


async def test_many_invalid_items_list_a_hundred_and_count_the_rest(bounded: Ingest) -> None:
    # 10,000 items, each with 40 unknown fields and none of the required ones: 430,000
    # problems; the answer lists 100 and says how many there are.
    item = b"{" + _keys(40) + b"}"
    body = b"[" + b",".join([item] * 10_000) + b"]"
    resp, seconds = _post(bounded, "/events/bulk", body)
    assert resp.status_code == 422, resp.text[:300]
    error = resp.json()["error"]
    assert len(error["details"]) == 100
    assert "430,000 problems in 10,000 events" in error["message"]
    assert {d["index"] for d in error["details"]} == {0, 1, 2}
    assert seconds < ANSWER_WITHIN_S
    assert bounded.peak_rss_kb() < RSS_LIMIT_KB


@pytest.mark.parametrize("path", ["/events", "/events/bulk"])
async def test_one_item_with_a_huge_number_of_fields_is_one_problem(
    bounded: Ingest, path: str
) -> None:
    fields = b"{" + b'"action":"a.b","status":"success","principal_id":"p",' + _keys(400_000) + b"}"
    body = fields if path == "/events" else b"[" + fields + b"]"
    assert 3 * MIB < len(body) < 10 * MIB
    resp, seconds = _post(bounded, path, body)
    assert resp.status_code == 422, resp.text[:300]
    details = resp.json()["error"]["details"]
    assert len(details) == 1 and details[0]["type"] == "too_many_fields", details
    assert seconds < ANSWER_WITHIN_S
    assert bounded.peak_rss_kb() < RSS_LIMIT_KB


async def test_too_many_json_values_answer_413(bounded: Ingest) -> None:
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
    resp, seconds = _post(bounded, "/events/bulk", body)
    assert resp.status_code == 413, resp.text[:300]
    assert "JSON values" in resp.json()["error"]["message"]
    assert seconds < ANSWER_WITHIN_S
    good = b"[" + b",".join([httpx.Request("POST", "/", json=event()).content] * 2_000) + b"]"
    accepted, _ = _post(bounded, "/events/bulk", good)
    assert accepted.status_code == 202, accepted.text[:300]
    assert bounded.peak_rss_kb() < RSS_LIMIT_KB


async def test_a_key_reads_only_its_share_of_large_bodies_at_once(bounded: Ingest) -> None:
    """Large bodies are read and parsed a few at a time per key: one key uploading slowly on
    many connections cannot hold the process's memory."""
    port = int(bounded.url.rsplit(":", 1)[1])
    head = (
        f"POST /events/bulk HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: {bounded.headers['Authorization']}\r\nContent-Length: {2 * MIB}\r\n\r\n"
    ).encode()
    held = []
    try:
        for _ in range(4):  # the key's share (AUDIT_LARGE_BODIES_PER_KEY), each mid-upload
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(head + b"[" + b" " * 1024)
            held.append(sock)
        await asyncio.sleep(0.3)
        over = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(over)
        over.sendall(head)
        answer = over.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        assert b"too_many_large_requests" in answer
    finally:
        for sock in held:
            sock.close()
    small, _ = _post(bounded, "/events", httpx.Request("POST", "/", json=event()).content)
    assert small.status_code == 202, small.text  # small requests were never held back
