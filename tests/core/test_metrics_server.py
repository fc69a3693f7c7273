"""The metrics endpoint of `worker` and `syslog`: prometheus_client's exposition behind the
metrics token, /healthz, nothing else, and no connection held open by a client that says
nothing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from app.core import metrics_server
from app.core.metrics_server import MetricsServer
from app.core.tokens import bearer_matches, bearer_token
from app.local.servers import free_port
from tests.conftest import make_settings

TOKEN = "scrape-me"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(metrics_server._QuietHandler, "timeout", 0.5)
    registry = CollectorRegistry()
    Counter("audit_things", "things counted", registry=registry).inc(3)
    port = free_port()
    settings = make_settings(
        "postgresql://unused/x",
        "redis://unused",
        worker_metrics_port=port,
        metrics_token=TOKEN,
    )
    server = MetricsServer(settings, registry)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_metrics_need_the_token(served: str) -> None:
    assert httpx.get(f"{served}/metrics").status_code == 401
    wrong = httpx.get(f"{served}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = httpx.get(f"{served}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    shown = httpx.get(f"{served}/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert shown.status_code == 200
    assert "audit_things_total 3.0" in shown.text
    assert shown.headers["content-type"].startswith("text/plain")


def test_health_and_nothing_else(served: str) -> None:
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served}/other").status_code == 404
    assert httpx.post(f"{served}/metrics").status_code == 405


def test_a_silent_client_is_let_go(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        started = time.monotonic()
        assert conn.recv(1) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
    assert bearer_matches("abc", header) is (token == "abc")
