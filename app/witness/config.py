"""What a witness is: its name and Ed25519 key (its identity), the logs it witnesses and their
keys, and its directory, from the AUDIT_WITNESS_* settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.core.config import Settings, parse_pairs
from app.ledger.notes import (
    COSIGNATURE_V1,
    ED25519,
    NoteError,
    VerifierKey,
    format_signer_key,
    parse_signer_key,
    parse_verifier_key,
    public_key_of,
    valid_key_name,
)
from app.witness.state import create_file, private_directory

KEY_FILE = "witness.key"


class WitnessConfigError(ValueError):
    """The witness's settings or key file cannot make a witness."""


@dataclass(frozen=True, slots=True)
class WitnessIdentity:
    """The witness's name and Ed25519 key; it cosigns with cosignature/v1 (type 0x04)."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier_key(self) -> VerifierKey:
        return VerifierKey(self.name, COSIGNATURE_V1, public_key_of(self.private_key))

    @property
    def vkey(self) -> str:
        """What logs configure the witness with: `<name>+<key ID>+base64(0x04 || key)`."""
        return self.verifier_key.vkey


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    identity: WitnessIdentity
    # origin -> the log's Ed25519 note keys (more than one while a key is rotated)
    logs: Mapping[str, tuple[VerifierKey, ...]]
    directory: Path


def parse_witness_logs(text: str) -> dict[str, tuple[VerifierKey, ...]]:
    """AUDIT_WITNESS_LOGS: `<origin>=<vkey>,...`, each vkey a log's Ed25519 note key (type
    0x01); an origin named twice has both keys. The origin ends at the first `=`, so it holds
    neither `=` nor `,`."""
    logs: dict[str, tuple[VerifierKey, ...]] = {}
    try:
        pairs = parse_pairs(text)
    except ValueError as exc:
        raise WitnessConfigError(f"AUDIT_WITNESS_LOGS: {exc}") from exc
    for origin, vkey in pairs:
        try:
            key = parse_verifier_key(vkey)
        except NoteError as exc:
            raise WitnessConfigError(f"log {origin!r}: {exc}") from exc
        if key.signature_type != ED25519:
            raise WitnessConfigError(f"log {origin!r}: {key.vkey} is not an Ed25519 note key")
        if key in logs.get(origin, ()):
            raise WitnessConfigError(f"log {origin!r}: key {key.vkey} named twice")
        logs[origin] = (*logs.get(origin, ()), key)
    return logs


def _identity_of(skey: str, name: str, where: str) -> WitnessIdentity:
    try:
        key_name, private_key = parse_signer_key(skey.strip())
    except (NoteError, ValueError) as exc:
        raise WitnessConfigError(f"{where} is not a signer key: {exc}") from exc
    if name and key_name != name:
        raise WitnessConfigError(f"{where} is the key of {key_name!r}, not {name!r}")
    return WitnessIdentity(key_name, private_key)


def load_identity(directory: Path, name: str, key: str) -> WitnessIdentity:
    """The witness's identity: from `key` (AUDIT_WITNESS_KEY, a signer key string
    `PRIVATE+KEY+<name>+...`) when set, else from the key file in `directory`, made (0600)
    with a new key for `name` the first time. A key of another name than a set `name` is
    refused: the name is part of the witness's identity."""
    if key:
        return _identity_of(key, name, "AUDIT_WITNESS_KEY")
    path = private_directory(directory) / KEY_FILE
    if not path.exists():
        if not valid_key_name(name):
            raise WitnessConfigError("AUDIT_WITNESS_NAME must name the witness (no spaces or +)")
        new = format_signer_key(name, Ed25519PrivateKey.generate()) + "\n"
        create_file(directory, KEY_FILE, new.encode())  # another process may have won: read
    return _identity_of(path.read_text(), name, str(path))


def witness_config(settings: Settings) -> WitnessConfig:
    directory = Path(settings.witness_dir)
    identity = load_identity(directory, settings.witness_name, settings.witness_key)
    return WitnessConfig(identity, parse_witness_logs(settings.witness_logs), directory)
