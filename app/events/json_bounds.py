"""Bounds of JSON text as events arrive in it, measured from the raw bytes before any parse: how
many values it holds, and how deeply it nests."""

from __future__ import annotations

import re

from app.core.errors import NestedTooDeep

# A JSON string, or one left open to the end of the text (with a lone backslash last, even):
# every match attempt from a quote succeeds and nothing is ever rescanned (possessive), so
# blanking the strings of any text is one pass. A pattern that failed on a string left open
# was retried from every quote after it: quadratic, seconds for 32 KiB of escaped quotes.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)

# The JSON parser (pydantic_core's) refuses to nest arrays and objects deeper than this; a body
# that does is told so plainly, and JSON carried inside a string (a FHIR AuditEvent's details)
# is held to the same limit, so it can be re-encoded and parsed as an event's.
MAX_JSON_DEPTH = 200

_OPENING = frozenset(b"[{")

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_values(body: bytes, limit: int) -> int:
    """An upper bound of the JSON values in `body`: one more than its commas and opening
    brackets, counted again with strings blanked out once the first count passes `limit` (a
    comma inside a string is no value)."""
    rough = body.count(b",") + body.count(b"{") + body.count(b"[") + 1
    if rough <= limit:
        return rough
    bare = _STRING.sub(b'""', body)
    return bare.count(b",") + bare.count(b"{") + bare.count(b"[") + 1


def json_depth(text: bytes) -> int:
    """How deeply JSON text nests arrays and objects (brackets in strings do not count),
    measured without recursion."""
    depth = deepest = 0
    for byte in _STRING.sub(b'""', text).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_depth(text: bytes, around: int = 0, what: str = "the body") -> None:
    """NestedTooDeep when JSON text, within `around` levels of the body that will carry it,
    nests deeper than MAX_JSON_DEPTH. Text with fewer brackets than that is not measured."""
    if text.count(b"[") + text.count(b"{") + around <= MAX_JSON_DEPTH:
        return
    if json_depth(text) + around > MAX_JSON_DEPTH:
        raise NestedTooDeep(
            f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep",
            details={"max_depth": MAX_JSON_DEPTH},
        )
