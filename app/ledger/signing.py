"""Ed25519 signatures of ledger heads, so an auditor holding only the public key can verify."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)


def raw_key(encoded: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{what} is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 raw bytes, base64-encoded")
    return raw


def ledger_private_key(private_key_b64: str) -> Ed25519PrivateKey:
    """The Ed25519 ledger key from base64 of its 32 raw bytes (AUDIT_LEDGER_PRIVATE_KEY)."""
    return Ed25519PrivateKey.from_private_bytes(raw_key(private_key_b64, "ledger key"))


class PublicSigner:
    def __init__(self, private_key_b64: str) -> None:
        self._key = ledger_private_key(private_key_b64)

    def sign(self, head: bytes) -> bytes:
        return self._key.sign(head)

    @property
    def public_key_b64(self) -> str:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()


def verify_public_signature(public_key_b64: str, head: bytes, signature: bytes) -> bool:
    key = Ed25519PublicKey.from_public_bytes(raw_key(public_key_b64, "ledger public key"))
    try:
        key.verify(signature, head)
    except InvalidSignature:
        return False
    return True


def new_keypair() -> tuple[str, str]:
    """(private, public) as base64 of the 32 raw bytes each."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def verify_with_any(public_keys: str, head: bytes, signature: bytes) -> bool:
    """Checks against a comma list of public keys, so heads signed before a key change verify."""
    keys = [key.strip() for key in public_keys.split(",") if key.strip()]
    return any(verify_public_signature(key, head, signature) for key in keys)
