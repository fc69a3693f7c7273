"""The console's forms (sign in, sign out): small url-encoded bodies, read no further than
MAX_FORM_BYTES."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import Request

MAX_FORM_BYTES = 4096


async def small_form(request: Request) -> dict[str, str]:
    """A small url-encoded form; {} for anything larger or malformed (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:
        return {}
    return {k: v[0] for k, v in parsed.items()}
