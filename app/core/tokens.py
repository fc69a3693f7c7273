"""Secrets compared in constant time, and the bearer token of an Authorization header."""

from __future__ import annotations

import hmac


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison for shared tokens (the optional /metrics token, the console's
    CSRF tokens). Compared as bytes: `hmac.compare_digest` refuses str with non-ASCII
    characters (TypeError), and whatever a caller sends may hold them."""
    if presented is None:
        return False
    return hmac.compare_digest(_raw(expected), _raw(presented))


def _raw(token: str) -> bytes:
    return token.encode("utf-8", "surrogatepass")  # any str, lone surrogates too


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case); None
    when the header is absent or not of that form."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_matches(expected: str, header: str | None) -> bool:
    """Whether an Authorization header carries `expected` as its bearer token (constant time)."""
    return token_matches(expected, bearer_token(header))
