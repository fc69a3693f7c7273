"""The Prometheus endpoint of the processes that serve no HTTP API (`python -m app worker`,
`python -m app syslog`) when AUDIT_WORKER_METRICS_PORT is set: prometheus_client's WSGI app and
threaded server on AUDIT_WORKER_METRICS_HOST (loopback unless set), in a thread of its own.
GET /metrics needs AUDIT_METRICS_TOKEN as a bearer token when that is set, as the API's does;
/healthz answers whether the process is up; any other path is 404."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from app.core.config import Settings
from app.core.tokens import bearer_matches

# A connection that sends no request within this many seconds is closed, so idle connections
# cannot pile up threads.
REQUEST_TIMEOUT_S = 5

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (the API's access log does not log them either)."""


def _json(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [body]


def metrics_app(registry: CollectorRegistry, token: str) -> WsgiApp:
    """prometheus_client's app for /metrics behind the token, and /healthz."""
    exposition: WsgiApp = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET":
            return _json(start_response, "405 Method Not Allowed", b'{"error":"method"}')
        if path == "/healthz":
            return _json(start_response, "200 OK", b'{"status":"ok"}')
        if path != "/metrics":
            return _json(start_response, "404 Not Found", b'{"error":"not_found"}')
        if token and not bearer_matches(token, environ.get("HTTP_AUTHORIZATION")):
            return _json(start_response, "401 Unauthorized", b'{"error":"unauthenticated"}')
        return exposition(environ, start_response)

    return app


def _server_class(host: str, port: int) -> type[ThreadingWSGIServer]:
    """The threaded server for the address family of `host` (an IPv6 address works too)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return type("MetricsHttpServer", (ThreadingWSGIServer,), {"address_family": family})


class MetricsServer:
    """Started with `start()`, stopped with `stop()` (which waits for the serving thread)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.server = make_server(
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            metrics_app(registry, settings.metrics_token),
            _server_class(settings.worker_metrics_host, settings.worker_metrics_port),
            handler_class=_QuietHandler,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
