"""Syslog on the wire: RFC 6587 octet-counted frames over a TCP stream, read in bounded memory;
the MSG part of the RFC 5424 message each carries; what a rejected message's dead letter keeps."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import orjson

MAX_LENGTH_DIGITS = 7
SKIP_CHUNK = 64 * 1024  # what is read at a time of a frame over the limit, and dropped
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


@dataclass(frozen=True, slots=True)
class Frame:
    """One octet-counted frame: the message, or its first `max_bytes` when it declared more
    (the rest was read and discarded)."""

    data: bytes
    length: int

    @property
    def oversize(self) -> bool:
        return self.length > len(self.data)


async def read_frame(reader: asyncio.StreamReader, max_bytes: int, first: bytes = b"") -> Frame:
    """One octet-counted frame whose first byte (`first`) may have been read already. A frame
    over `max_bytes` is still a frame: its first `max_bytes` are kept and the rest is read in
    chunks and dropped, so the stream stays framed and nothing large is held."""
    try:
        head = first if first == b" " else first + await reader.readuntil(b" ")
    except asyncio.IncompleteReadError as exc:
        raise BadFrame("the stream ended inside a frame's length") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadFrame("no octet count before the message") from exc
    digits = head[:-1].strip(b"\r\n")
    if not digits.isdigit() or len(digits) > MAX_LENGTH_DIGITS or digits.startswith(b"0"):
        raise BadFrame("no octet count before the message (RFC 6587 octet counting)")
    length = int(digits)
    try:
        data = await reader.readexactly(min(length, max_bytes))
    except asyncio.IncompleteReadError as exc:
        raise BadFrame("the stream ended inside a message") from exc
    left = length - len(data)
    while left:
        chunk = await reader.read(min(left, SKIP_CHUNK))
        if not chunk:
            raise BadFrame("the stream ended inside a message")
        left -= len(chunk)
    return Frame(data, length)


def kept_message(source: str, frame: Frame, received_at: str) -> bytes:
    """What a rejected message's dead letter holds: the message as read (at most the maximum
    message size), where and when it came from. The message is kept as text when it is UTF-8
    and its JSON string is no longer than its base64 would be, else as base64, so a dead letter
    is at most about 4/3 of what was read (JSON writes a control byte as six)."""
    kept: dict[str, Any] = {
        "source": source,
        "received_at": received_at,
        "length": frame.length,
        "truncated": frame.oversize,
    }
    encoded = base64.b64encode(frame.data)
    try:
        text = frame.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(orjson.dumps(text)) <= len(encoded) + 2:
        kept["message"] = text
    else:
        kept["message_base64"] = encoded.decode()
    return orjson.dumps(kept)
