"""What the service vouches for itself, with AUDIT_SERVICE_KEYS.

Redis is not trusted: anyone who can XADD to the stream could otherwise have the writers sign
and seal an event for any organization. The API therefore MACs every stream entry it queues
(its stream, event count, organizations and payload), and writers seal only entries whose MAC
checks; what fails goes to the dead-letter stream owned by no organization. Writers MAC the
dead letters they set aside, and only those replay. API key rows carry a MAC too (app.apikeys.keys),
so a row inserted around `keys create` is refused.

Each use has a key of its own, derived from each ring key as HMAC(secret, purpose), so a MAC of
one kind never passes for another. The message is the parts, each preceded by its length (8
bytes big-endian), so no two lists of parts give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app.core.config import SigningKey

QUEUE_ENTRY = b"audit-ingest queue entry v1"

DEAD_LETTER = b"audit-ingest dead letter v1"

API_KEY_ROW = b"audit-ingest api key row v1"


class NoServiceKey(RuntimeError):
    """AUDIT_SERVICE_KEYS is empty: nothing can be vouched for or checked."""


@functools.lru_cache(maxsize=64)
def _derived(secret: bytes, purpose: bytes) -> bytes:
    return hmac.digest(secret, purpose, hashlib.sha256)


def _message(parts: Sequence[bytes]) -> bytes:
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


@dataclass(frozen=True, slots=True)
class ServiceMac:
    """MACs of one purpose with the service key ring: the first key signs, all check."""

    ring: tuple[SigningKey, ...]
    purpose: bytes

    def __post_init__(self) -> None:
        if not self.ring:
            raise NoServiceKey(
                "AUDIT_SERVICE_KEYS is empty: set it (id:base64secret, see .env.example)"
            )

    def sign(self, *parts: bytes) -> tuple[str, bytes]:
        """(key id, MAC) of the parts with the active key."""
        key = self.ring[0]
        secret = _derived(key.secret, self.purpose)
        return key.key_id, hmac.digest(secret, _message(parts), "sha256")

    def check(self, key_id: str, mac: bytes, *parts: bytes, retired_ok: bool = False) -> bool:
        """The MAC was made by a key of the ring over exactly these parts (constant time). A
        key past its retirement vouches for nothing any more, unless `retired_ok` (to find
        what should be vouched for again with the active key)."""
        key = next((k for k in self.ring if k.key_id == key_id), None)
        if key is None or (not retired_ok and key.retired_by(datetime.now(UTC))):
            return False
        expected = hmac.digest(_derived(key.secret, self.purpose), _message(parts), "sha256")
        return hmac.compare_digest(expected, mac)


@dataclass(frozen=True, slots=True)
class ServiceMacs:
    """The service's MACs, one per purpose."""

    entries: ServiceMac
    dead_letters: ServiceMac
    api_keys: ServiceMac

    @classmethod
    def of(cls, ring: tuple[SigningKey, ...]) -> ServiceMacs:
        return cls(
            ServiceMac(ring, QUEUE_ENTRY),
            ServiceMac(ring, DEAD_LETTER),
            ServiceMac(ring, API_KEY_ROW),
        )
