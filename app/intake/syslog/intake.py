"""An IHE ATNA audit record repository's syslog side (`python -m app syslog`). RFC 5424 messages
over TCP with octet counting (RFC 6587), TLS with client certificates optional (RFC 5425), each
carrying one DICOM PS3.15 or RFC 3881 audit message (app.intake.atna), stored as events with the
same validation, admission (rates, quota, the queue's depth) and sealing as `POST /events`. This
module takes each connection in and each message on; app.intake.syslog.receiver holds the sockets.

Authentication is per source: AUDIT_SYSLOG_SOURCES maps a sender to the organization its events
belong to, `address=organization` or, with TLS, `CN=<certificate common name>=organization`.
Connections are accepted as plain TCP; the peer's address and the connection caps are checked
before anything is read or any TLS handshake begins, and a handshake has a short timeout.
Connections still in their handshake (not yet authenticated) count against a budget of their
own, whose oldest makes way for a newcomer, so they cannot keep authenticated senders out.
Syslog has no answer channel: a message that cannot be used (an oversize one included: its
octet count still frames the stream, so it is read past, not buffered) is rejected with a log
line (the source, the reason, never the content), counted in
`audit_syslog_messages_total{outcome="rejected"}` and set aside in the organization's dead
letters (past their caps, in count or bytes, dropped and counted as `rejected_dropped`), and
the next message is read. While the queue refuses events (full, or over the organization's
quota or rate) the receiver stops reading that connection and tries again each second, so TCP
holds the sender back; no event read is dropped, at shutdown either (what is still held back
is set aside as a dead letter that replays). Each event's id is derived from
its organization and the audit message's bytes, so a message sent twice is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import socket
import ssl
import uuid
from asyncio import FIRST_COMPLETED
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from app.core.caller import Caller
from app.core.config import Network, Settings
from app.core.errors import ApiError, Backpressure, Unavailable
from app.core.limits import TooManyRequests
from app.core.metrics import Metrics
from app.core.service_macs import ServiceMacs
from app.core.tasks import wait_or_stop
from app.core.timefmt import format_timestamp
from app.intake.atna import NotAnAuditMessage, event_of, parse_xml
from app.intake.bodies import limits_of, parse_bulk
from app.intake.syslog.connections import Budget, LogLimiter, Slot, source_key
from app.intake.syslog.frames import (
    BadFrame,
    BadMessage,
    Frame,
    kept_message,
    read_frame,
    rfc5424_body,
)
from app.queue.dead_letters import DeadLetters
from app.queue.recorder import Recorder
from app.queue.shards import ShardedStream

log = logging.getLogger(__name__)
READ_BUFFER = 64 * 1024  # also the most read while looking for a frame's length
CLOSE_S = 5.0  # after the grace: for what is held back to be set aside, then for cancellation
NAMESPACE = uuid.UUID("6f1c2d57-3a0e-4c55-9a3e-2f8b1d0c7e41")  # event ids of syslog messages


class Pipeline(Protocol):
    """What the receiver runs on: a process's resources (app.wiring.Resources has them)."""

    settings: Settings
    stream: ShardedStream
    macs: ServiceMacs
    metrics: Metrics
    recorder: Recorder
    stopping: asyncio.Event


@dataclass
class SyslogIntake:
    res: Pipeline
    sources: dict[str, str]
    tls: ssl.SSLContext | None = None
    networks: tuple[Network, ...] = ()
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Authenticated connections (an address source, or a certificate checked) count against
    # `connections`; those still in a TLS handshake against the smaller `handshakes`, whose
    # oldest makes way for a newcomer when it is full: unauthenticated connections cannot take
    # an authenticated sender's place, nor keep one from getting in.
    connections: Budget = field(init=False)
    handshakes: Budget = field(init=False)
    unproven: dict[Slot, asyncio.Task[None]] = field(default_factory=dict)  # oldest first
    lines: LogLimiter = field(default_factory=LogLimiter)
    # Draining: no new frame is begun. Closing: what is held back is set aside, not retried.
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        settings = self.settings
        self.connections = Budget(
            settings.syslog_max_connections,
            settings.syslog_max_connections_per_source,
            ("AUDIT_SYSLOG_MAX_CONNECTIONS", "AUDIT_SYSLOG_MAX_CONNECTIONS_PER_SOURCE"),
        )
        self.handshakes = Budget(
            settings.syslog_max_handshakes,
            settings.syslog_max_handshakes_per_source,
            ("AUDIT_SYSLOG_MAX_HANDSHAKES", "AUDIT_SYSLOG_MAX_HANDSHAKES_PER_SOURCE"),
        )

    @property
    def settings(self) -> Settings:
        return self.res.settings

    def organization_of(self, writer: asyncio.StreamWriter, address: str) -> tuple[str, str | None]:
        """(source, its organization or None) of a connection from `address`: the
        certificate's common name under TLS when it is in the map, else the address."""
        certificate = writer.get_extra_info("peercert")
        if certificate:
            for rdn in certificate.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName" and f"CN={value}" in self.sources:
                        return f"CN={value}", self.sources[f"CN={value}"]
        return address, self.sources.get(address)

    def may_connect(self, address: str) -> bool:
        """The address may open a connection (checked before any handshake): an address
        source, or under TLS one of the allowed networks or, with certificate names to
        authenticate and no networks set, any."""
        if address in self.sources:
            return True
        if self.tls is None:
            return False
        if self.networks:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            return any(ip in network for network in self.networks)
        return any(s.startswith("CN=") for s in self.sources)

    def event(self, organization: str, frame: bytes) -> Any:
        """The validated event of one frame (an EventIn), or BadMessage."""
        body = rfc5424_body(frame)
        try:
            mapped = event_of(parse_xml(body))
        except NotAnAuditMessage as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise BadMessage(f"not a usable audit message{where}: {exc}") from exc
        # The same audit message sent again (a new syslog header) is the same event.
        digest = hashlib.sha256(organization.encode() + b"\0" + body.encode()).hexdigest()
        mapped["event_id"] = str(uuid.uuid5(NAMESPACE, digest))
        try:
            return parse_bulk(orjson.dumps([mapped]), limits_of(self.settings, 1))[0]
        except ApiError as exc:
            problems = exc.details if isinstance(exc.details, list) else []
            reasons = sorted({str(d.get("type")) for d in problems} or {exc.code})
            raise BadMessage(f"the mapped event is invalid: {', '.join(reasons)}") from exc

    def _stopped(self) -> bool:
        return self.closing.is_set() or self.res.stopping.is_set()

    async def store(self, source: str, organization: str, event: Any) -> bool:
        """Queue one event, waiting (not reading on) while the queue refuses it; True once
        queued. When the receiver closes meanwhile, the event is set aside as a dead letter
        that can be replayed (False)."""
        record = event.to_record(organization, format_timestamp(datetime.now(UTC)))
        while True:
            try:
                sender = Caller(f"syslog:{source}", organization, frozenset())
                await self.res.recorder.record(sender, record)
                return True
            except (Backpressure, TooManyRequests, Unavailable) as exc:
                log.info("syslog from %s held back: %s", source, exc.code)
                why = exc.code
            except (OSError, RedisError) as exc:
                log.warning("syslog from %s: queue unreachable (%s)", source, type(exc).__name__)
                why = type(exc).__name__
            self.count("held_back")
            if self._stopped():
                error = f"syslog receiver stopped before the queue took the event ({why})"
                await self._set_aside(
                    source, organization, error, orjson.dumps(record), vouched=True
                )
                return False
            await wait_or_stop(self.closing, 1.0)

    async def _set_aside(
        self, source: str, organization: str, error: str, payload: bytes, *, vouched: bool
    ) -> bool:
        """Into the organization's dead letters; False when it was not kept: a rejected
        message (not `vouched`) while the organization holds syslog_max_dead_letters or
        syslog_max_dead_letter_bytes of them (an event read, `vouched`, is always kept). Redis
        unreachable: the sender is held back and it is tried each second; while closing,
        logged and counted as lost, the one way a message read is not kept unnoticed."""
        dead = DeadLetters(self.res.stream, organization, self.res.macs)
        max_items = None if vouched else self.settings.syslog_max_dead_letters
        max_bytes = None if vouched else self.settings.syslog_max_dead_letter_bytes
        while True:
            try:
                kept = await dead.set_aside(
                    error, payload, vouched=vouched, max_items=max_items, max_bytes=max_bytes
                )
                if kept is None:
                    return False
                self.count("dead_lettered")
                self.res.metrics.dead_lettered.inc()
                return True
            except (OSError, RedisError) as exc:
                if self._stopped():
                    self.count("lost")
                    log.error("syslog message from %s lost: %s", source, type(exc).__name__)
                    return False
                log.warning("syslog from %s: dead letters unreachable (%s)", source, exc)
            self.count("held_back")
            await wait_or_stop(self.closing, 1.0)

    def count(self, outcome: str) -> None:
        self.res.metrics.syslog_messages.labels(outcome=outcome).inc()

    def admit(self, connection: socket.socket, address: str) -> bool:
        """Take an accepted connection in (its task started), or close it at once: an address
        that may not connect, or over a cap. Nothing is read from it before this. A connection
        to be authenticated by its certificate counts against the handshake budget until it
        is; when that is full in all (not for its source), the oldest there makes way."""
        if not self.may_connect(address):
            self.count("refused_source")
            self.lines.refused("refused_source", address, "not a known source")
            connection.close()
            return False
        slot = Slot(source_key(address))
        budget = self.connections
        if self.tls is not None and address not in self.sources:
            budget = self.handshakes
            if budget.full and not budget.over_source(slot.key):
                self._make_way()
        why = budget.refusal(slot.key)
        if why is not None:
            self.count("refused_busy")
            self.lines.refused("refused_busy", address, why)
            connection.close()
            return False
        slot.hold(budget)
        task = asyncio.create_task(self.connection(connection, address, slot))
        self.tasks.add(task)
        if budget is self.handshakes:
            self.unproven[slot] = task
        task.add_done_callback(lambda done: self._closed(done, slot))
        return True

    def _make_way(self) -> None:
        """End the oldest connection still in its handshake, its place given back now."""
        slot, task = next(iter(self.unproven.items()))
        del self.unproven[slot]
        slot.release()
        task.cancel()
        self.count("refused_handshake")
        self.lines.refused(
            "refused_handshake", slot.key, "made way for a newer one (AUDIT_SYSLOG_MAX_HANDSHAKES)"
        )

    def _closed(self, task: asyncio.Task[None], slot: Slot) -> None:
        self.tasks.discard(task)
        self.unproven.pop(slot, None)
        slot.release()

    async def connection(self, connection: socket.socket, address: str, slot: Slot) -> None:
        """One admitted connection: TLS when configured (done within
        syslog_tls_handshake_timeout_s), its source looked up (and, authenticated by its
        certificate, moved to the connections' budget), then its frames read."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_BUFFER, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        timeout = self.settings.syslog_tls_handshake_timeout_s if self.tls else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, connection, ssl=self.tls, ssl_handshake_timeout=timeout
            )
        except (OSError, ssl.SSLError) as exc:  # the handshake failed or timed out
            connection.close()
            self.count("refused_handshake")
            self.lines.refused("refused_handshake", address, type(exc).__name__)
            return
        except asyncio.CancelledError:  # made way for a newer one, or the receiver stopped
            connection.close()
            raise
        self.unproven.pop(slot, None)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        source = address
        try:
            source, organization = self.organization_of(writer, address)
            if organization is None:
                self.count("refused_source")
                self.lines.refused("refused_source", source, "not a known source")
                return
            if slot.budget is self.handshakes:
                why = self.connections.refusal(slot.key)
                if why is not None:
                    self.count("refused_busy")
                    self.lines.refused("refused_busy", source, why)
                    return
                slot.hold(self.connections)
            await self._read(reader, source, organization)
        except BadFrame as exc:
            self.count("bad_frame")
            log.warning("syslog connection from %s closed: %s", source, exc)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.info("syslog connection from %s ended: %s", source, type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _first_byte(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next frame's first byte; None at the end of the stream, or when the receiver
        drains before it arrived."""
        idle = self.settings.syslog_idle_timeout_s
        first = asyncio.ensure_future(reader.read(1))
        draining = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({first, draining}, timeout=idle, return_when=FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not first.done():
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await first
        if first.cancelled():
            if self.draining.is_set():
                return None
            raise TimeoutError("idle")
        return first.result() or None

    async def _read(self, reader: asyncio.StreamReader, source: str, organization: str) -> None:
        """Frame after frame until the stream ends or the receiver drains: a frame begun is
        read to its end and queued or set aside. One still arriving when the receiver cuts its
        connection at shutdown, or that Redis does not take by then, is counted and logged as
        lost."""
        idle = self.settings.syslog_idle_timeout_s
        limit = self.settings.syslog_max_message_bytes
        while (byte := await self._first_byte(reader)) is not None:
            try:
                frame = await asyncio.wait_for(read_frame(reader, limit, byte), idle)
                await self._take(source, organization, frame)
            except asyncio.CancelledError:
                self.count("lost")
                log.error(
                    "syslog message from %s lost: the receiver stopped while it was arriving"
                    " or being queued",
                    source,
                )
                raise

    async def _take(self, source: str, organization: str, frame: Frame) -> None:
        """Queue one frame's event, or reject the frame into the organization's dead letters."""
        limit = self.settings.syslog_max_message_bytes
        try:
            if frame.oversize:
                raise BadMessage(f"a message of {frame.length} bytes is over the limit of {limit}")
            event = self.event(organization, frame.data)
        except BadMessage as exc:
            return await self._reject(source, organization, frame, str(exc))
        except Exception as exc:  # whatever a message does, the connection reads on
            return await self._reject(source, organization, frame, type(exc).__name__)
        try:
            queued = await self.store(source, organization, event)
        except ApiError as exc:  # refused for good (not a transient refusal)
            return await self._reject(source, organization, frame, f"refused: {exc.code}")
        if queued:
            self.count("accepted")

    async def _reject(self, source: str, organization: str, frame: Frame, reason: str) -> None:
        """Count and log (one line per source every LOG_EVERY_S) a message that cannot be
        used, and set it aside in the organization's dead letters, or past their caps drop it."""
        self.count("rejected")
        self.lines.warning(
            f"rejected {source}", "syslog message from %s rejected: %s", source, reason
        )
        kept = kept_message(source, frame, format_timestamp(datetime.now(UTC)))
        error = f"syslog message rejected: {reason}"
        if not await self._set_aside(source, organization, error, kept, vouched=False):
            # Past the caps: dropped, not held, so one bad device cannot stall the good ones.
            self.count("rejected_dropped")
            self.lines.warning(
                f"dropped {source}",
                "syslog message from %s dropped: its organization's dead letters are full"
                " (AUDIT_SYSLOG_MAX_DEAD_LETTERS or AUDIT_SYSLOG_MAX_DEAD_LETTER_BYTES)",
                source,
            )

    async def drain(self, grace_s: float) -> None:
        """Stop beginning frames; let each connection queue (or set aside) what it read within
        `grace_s`; then set aside what is still held back, and end what remains."""
        self.draining.set()
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        if pending:
            self.closing.set()
            _, pending = await asyncio.wait(pending, timeout=CLOSE_S)
        for task in pending:  # inside a frame still arriving, or Redis not answering
            task.cancel()
        if pending:
            log.warning("syslog receiver stopped: %d connections cut", len(pending))
            await asyncio.wait(pending, timeout=CLOSE_S)
