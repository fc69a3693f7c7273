"""Secrets compared in constant time."""

from __future__ import annotations

import hmac


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison for shared tokens (the optional /metrics token)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
