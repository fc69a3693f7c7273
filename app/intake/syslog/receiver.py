"""The syslog receiver's sockets: listening on every address of the host, TLS (RFC 5425) when
configured, connections accepted as plain TCP and handed to the intake
(app.intake.syslog.intake), which checks them before anything is read or any handshake
begins."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field

from app.core.config import Settings, parse_networks, parse_syslog_sources
from app.intake.syslog.connections import peer_address
from app.intake.syslog.intake import Pipeline, SyslogIntake

log = logging.getLogger(__name__)
BACKLOG = 128


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server TLS (RFC 5425) when a certificate is set; client certificates required when a CA
    is set."""
    if not settings.syslog_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.syslog_tls_cert, settings.syslog_tls_key or None)
    if settings.syslog_tls_ca:
        context.load_verify_locations(settings.syslog_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class SyslogReceiver:
    """The listening sockets and their connections. Connections are accepted as plain TCP:
    the peer's address is checked and the caps applied before anything is read or any TLS
    handshake begins. Closing (or leaving `async with`) stops accepting and drains the open
    connections (`SyslogIntake.drain`, AUDIT_SHUTDOWN_GRACE_S)."""

    listening: list[socket.socket]
    intake: SyslogIntake
    acceptors: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self.listening)

    def start(self) -> None:
        self.acceptors = [
            asyncio.create_task(self._accept(sock), name="syslog-accept") for sock in self.listening
        ]

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(listening)
            except OSError as exc:  # out of file descriptors, or the like: back off, carry on
                self.intake.count("accept_error")
                log.error("syslog receiver cannot accept: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            connection.setblocking(False)
            self.intake.admit(connection, peer_address(str(peer[0])))

    async def close(self) -> None:
        for task in self.acceptors:
            task.cancel()
        await asyncio.gather(*self.acceptors, return_exceptions=True)
        for sock in self.listening:
            sock.close()
        await self.intake.drain(self.intake.settings.shutdown_grace_s)

    async def __aenter__(self) -> SyslogReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets on every address of `host` (as asyncio.start_server binds); an
    empty host is every interface, IPv4 and IPv6."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_server(res: Pipeline) -> SyslogReceiver:
    settings = res.settings
    sources = parse_syslog_sources(settings.syslog_sources)
    intake = SyslogIntake(
        res,
        {name if name.startswith("CN=") else peer_address(name): o for name, o in sources.items()},
        tls=tls_context(settings),
        networks=parse_networks(settings.syslog_allowed_networks),
    )
    if not intake.sources:
        raise RuntimeError("AUDIT_SYSLOG_SOURCES is empty: no sender would be accepted")
    if intake.tls and not intake.networks and any(s.startswith("CN=") for s in intake.sources):
        log.warning(
            "syslog: CN= sources and no AUDIT_SYSLOG_ALLOWED_NETWORKS: any address may open a"
            " connection and try a TLS handshake (within AUDIT_SYSLOG_MAX_HANDSHAKES); name the"
            " senders' networks to refuse everyone else before it"
        )
    receiver = SyslogReceiver(listen(settings.syslog_host, settings.syslog_port), intake)
    receiver.start()
    return receiver
