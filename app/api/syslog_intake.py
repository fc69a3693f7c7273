"""`python -m app syslog`: an IHE ATNA audit record repository's syslog side. RFC 5424 messages
over TCP with octet counting (RFC 6587), TLS with client certificates optional (RFC 5425), each
carrying one DICOM PS3.15 or RFC 3881 audit message (app.api.atna), stored as events with the
same validation, admission (rates, quota, the queue's depth) and sealing as `POST /events`.

Authentication is per source: AUDIT_SYSLOG_SOURCES maps a sender to the organization its events
belong to, `address=organization` or, with TLS, `CN=<certificate common name>=organization`. A
connection from a source not in the map is closed before anything is read. Syslog has no
answer channel: a message that cannot be used is rejected with a log line (the source, the
reason, never the content) and counted in `audit_syslog_messages_total{outcome="rejected"}`, and
the next message is read. While the queue refuses events (full, or over the organization's
quota or rate) the receiver stops reading that connection and tries again each second, so TCP
holds the sender back; nothing read is dropped. Each event's id is derived from its organization
and the audit message's bytes, so a message sent twice is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from app.api.atna import NotAnAuditMessage, event_of, parse_xml
from app.api.ingest_bodies import limits_of, parse_bulk
from app.core.config import Settings, parse_syslog_sources
from app.core.errors import ApiError, Backpressure, Unavailable
from app.core.limits import TooManyRequests
from app.core.timefmt import format_timestamp
from app.wiring import Resources, queue_record

log = logging.getLogger(__name__)
MAX_LENGTH_DIGITS = 7
READ_BUFFER = 64 * 1024  # also the most read while looking for a frame's length
NAMESPACE = uuid.UUID("6f1c2d57-3a0e-4c55-9a3e-2f8b1d0c7e41")  # event ids of syslog messages
BOM = "\ufeff"


class BadFrame(ValueError):
    """The stream is not octet-counted syslog: the connection cannot be read on."""


class BadMessage(ValueError):
    """One message that cannot be used; the next one is read."""


def rfc5424_body(frame: bytes) -> str:
    """The MSG part of an RFC 5424 message (after the header and the structured data)."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage("the message is not UTF-8") from exc
    if not text.startswith("<") or ">" not in text[:5]:
        raise BadMessage("no <PRI> at the start: not an RFC 5424 message")
    rest = text[text.index(">") + 1 :]
    parts = rest.split(" ", 6)  # VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD+MSG
    if len(parts) < 7 or parts[0] != "1":
        raise BadMessage("not an RFC 5424 message (version 1 with six header fields)")
    return _after_structured_data(parts[6]).removeprefix(BOM).strip()


def _after_structured_data(text: str) -> str:
    if text.startswith("-"):
        return text[1:].lstrip(" ")
    depth, quoted, escaped = 0, False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' and depth:
            quoted = not quoted
        elif quoted:
            continue
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0 and (i + 1 == len(text) or text[i + 1] != "["):
                return text[i + 1 :].lstrip(" ")
    raise BadMessage("unterminated structured data")


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """One octet-counted frame, None at a clean end of the stream."""
    try:
        head = await reader.readuntil(b" ")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadFrame("the stream ended inside a frame's length") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadFrame("no octet count before the message") from exc
    digits = head[:-1].strip(b"\r\n")
    if not digits.isdigit() or len(digits) > MAX_LENGTH_DIGITS or digits.startswith(b"0"):
        raise BadFrame("no octet count before the message (RFC 6587 octet counting)")
    length = int(digits)
    if length > max_bytes:
        raise BadFrame(f"a message of {length} bytes is over the limit of {max_bytes}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise BadFrame("the stream ended inside a message") from exc


@dataclass
class SyslogIntake:
    res: Resources
    sources: dict[str, str]

    @property
    def settings(self) -> Settings:
        return self.res.settings

    def organization_of(self, writer: asyncio.StreamWriter) -> tuple[str, str | None]:
        """(source, its organization or None) of a connection: the certificate's common name
        under TLS when it is in the map, else the peer's address."""
        certificate = writer.get_extra_info("peercert")
        if certificate:
            for rdn in certificate.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName" and f"CN={value}" in self.sources:
                        return f"CN={value}", self.sources[f"CN={value}"]
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        return address, self.sources.get(address)

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

    async def store(self, source: str, organization: str, event: Any) -> None:
        """Queue one event, waiting (not reading on) while the queue refuses it."""
        record = event.to_record(organization, format_timestamp(datetime.now(UTC)))
        while not self.res.stopping.is_set():
            try:
                await queue_record(self.res, f"syslog:{source}", frozenset(), organization, record)
                return
            except (Backpressure, TooManyRequests, Unavailable) as exc:
                log.info("syslog from %s held back: %s", source, exc.code)
            except (OSError, RedisError) as exc:
                log.warning("syslog from %s: queue unreachable (%s)", source, type(exc).__name__)
            self._count("held_back")
            await asyncio.sleep(1.0)
        raise ConnectionError("the receiver is stopping")

    def _count(self, outcome: str) -> None:
        self.res.metrics.syslog_messages.labels(outcome=outcome).inc()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source, organization = self.organization_of(writer)
        try:
            if organization is None:
                self._count("refused_source")
                log.warning("syslog connection from %s refused: not a known source", source)
                return
            await self._read(reader, source, organization)
        except BadFrame as exc:
            self._count("bad_frame")
            log.warning("syslog connection from %s closed: %s", source, exc)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.info("syslog connection from %s ended: %s", source, type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, source: str, organization: str) -> None:
        idle = self.settings.syslog_idle_timeout_s
        while True:
            frame = await asyncio.wait_for(
                read_frame(reader, self.settings.syslog_max_message_bytes), idle
            )
            if frame is None:
                return
            try:
                event = self.event(organization, frame)
            except BadMessage as exc:
                self._count("rejected")
                log.warning("syslog message from %s rejected: %s", source, exc)
                continue
            except Exception as exc:  # whatever a message does, the connection reads on
                self._count("rejected")
                log.warning("syslog message from %s rejected: %s", source, type(exc).__name__)
                continue
            try:
                await self.store(source, organization, event)
            except ApiError as exc:  # refused for good (not a transient refusal): counted
                self._count("rejected")
                log.warning("syslog message from %s refused: %s", source, exc.code)
                continue
            self._count("accepted")


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


async def start_server(res: Resources) -> asyncio.Server:
    settings = res.settings
    intake = SyslogIntake(res, parse_syslog_sources(settings.syslog_sources))
    if not intake.sources:
        raise RuntimeError("AUDIT_SYSLOG_SOURCES is empty: no sender would be accepted")
    return await asyncio.start_server(
        intake.connection,
        settings.syslog_host,
        settings.syslog_port,
        ssl=tls_context(settings),
        limit=READ_BUFFER,
    )
