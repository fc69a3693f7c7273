"""Secrets compared in constant time."""

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
