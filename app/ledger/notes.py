"""Signed notes, checkpoints and cosignatures: C2SP signed-note, tlog-checkpoint and
tlog-cosignature (cosignature/v1), with Ed25519 from `cryptography`.

A signed note is a text ending in a newline, a blank line, and signature lines
`— <key name> base64(key ID || signature)`. A checkpoint is a note whose text is a log's origin,
tree size and root hash. A witness cosigns a checkpoint with a timestamped Ed25519 signature of
type 0x04 over `cosignature/v1\\ntime <T>\\n` and the checkpoint text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# Signature type bytes of C2SP signed-note, section Signature types.
ED25519 = 0x01
COSIGNATURE_V1 = 0x04

EM_DASH = "\u2014"
SIGNATURE_PREFIX = EM_DASH + " "
COSIGNATURE_HEADER = "cosignature/v1\n"

# The spec asks verifiers to bound a note but to take at least 16 signatures, post-quantum ones
# of up to nearly 5 kB (6.2 kB in base64) included; golang.org/x/mod takes 100 signatures.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 128 * 1024
MAX_TIMESTAMP = 2**63 - 1
MAX_TREE_SIZE = 2**64 - 1

_ED25519_KEY = 32
_ED25519_SIG = 64


class NoteError(ValueError):
    """A note, key or checkpoint is malformed, or its signatures do not verify."""


class MalformedNoteError(NoteError):
    """Not a note, key or checkpoint as the specs spell them."""


class InvalidNoteSignatureError(NoteError):
    """A signature by a known key (name and key ID match) does not verify."""


class UnverifiedNoteError(NoteError):
    """No signature by a known key: the text must be ignored."""


# -- keys ---------------------------------------------------------------------------------------


def valid_key_name(name: str) -> bool:
    """C2SP signed-note, section Format: non-empty, no Unicode space, no plus sign."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, signature_type: int, public_key: bytes) -> int:
    """C2SP signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4], as a
    big-endian uint32. tlog-cosignature uses type 0x04 for the same Ed25519 key."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key by name, key ID and signature type (0x01 note, 0x04 cosignature/v1)."""

    name: str
    signature_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise MalformedNoteError(f"invalid key name {self.name!r}")
        if self.signature_type not in (ED25519, COSIGNATURE_V1):
            raise MalformedNoteError(f"unsupported signature type {self.signature_type:#04x}")
        if len(self.public_key) != _ED25519_KEY:
            raise MalformedNoteError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.signature_type, self.public_key)

    @property
    def vkey(self) -> str:
        """<name>+hex(key ID)+base64(type || public key): C2SP signed-note, Verifier keys."""
        material = base64.b64encode(bytes([self.signature_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"


def _b64decode(text: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4): padded, no other characters, canonical."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise MalformedNoteError("invalid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise MalformedNoteError("non-canonical base64")
    return raw


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parses a vkey `<name>+<8 hex digits>+<base64(type || key)>` and checks that the key ID
    is the one the name, type and key give."""
    name, _, rest = vkey.partition("+")
    hex_id, _, material = rest.partition("+")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or not material:
        raise MalformedNoteError(f"malformed verifier key {vkey!r}")
    raw = _b64decode(material)
    if not raw:
        raise MalformedNoteError("verifier key has no key material")
    key = VerifierKey(name, raw[0], raw[1:])
    if key.key_id != int(hex_id, 16):
        raise MalformedNoteError(f"verifier key {name!r} names the wrong key ID")
    return key


def public_key_of(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def parse_signer_key(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """golang.org/x/mod/sumdb/note's private key string,
    `PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte seed)`, as its note.GenerateKey
    writes it: (name, key). Not part of a C2SP spec; it lets keys move between tools."""
    parts = skey.split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise MalformedNoteError("malformed signer key")
    name, hex_id, material = parts[2:]
    raw = _b64decode(material)
    if (
        len(raw) != 1 + _ED25519_KEY
        or raw[0] != ED25519
        or not re.fullmatch(r"[0-9a-f]{8}", hex_id)
    ):
        raise MalformedNoteError("malformed signer key")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if VerifierKey(name, ED25519, public_key_of(private_key)).key_id != int(hex_id, 16):
        raise MalformedNoteError(f"signer key {name!r} names the wrong key ID")
    return name, private_key


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The private key string parse_signer_key reads (and Go's note.NewSigner): the key's
    name, its Ed25519 key ID and base64(0x01 || 32-byte seed)."""
    seed = private_key.private_bytes_raw()
    key = VerifierKey(name, ED25519, public_key_of(private_key))
    material = base64.b64encode(bytes([ED25519]) + seed).decode()
    return f"PRIVATE+KEY+{name}+{key.key_id:08x}+{material}"


# -- notes --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the key name, and key ID || signature as the line carries them."""

    name: str
    key_id: int
    signature: bytes

    @property
    def line(self) -> str:
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """An opened note: its text, the signatures that verified, and those of unknown keys."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    """Valid UTF-8 (a str is) without control characters but newline, ending in a newline."""
    if not text.endswith("\n") or any(c < " " and c != "\n" for c in text):
        raise MalformedNoteError("note text must end in a newline and hold no control characters")


def format_note(text: str, signatures: Iterable[NoteSignature]) -> str:
    """The signed note: text, a blank line, one line per signature (C2SP signed-note, Format)."""
    _check_text(text)
    lines = [signature.line for signature in signatures]
    if not lines:
        raise MalformedNoteError("a signed note needs at least one signature")
    return text + "\n" + "".join(lines)


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNoteError("signature line does not start with an em dash and a space")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not valid_key_name(name):
        raise MalformedNoteError(f"invalid key name {name!r}")
    blob = _b64decode(encoded)
    if len(blob) < 5:
        raise MalformedNoteError("signature shorter than a key ID and one byte")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def parse_note(message: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Splits a signed note into its text and signature lines without verifying them (C2SP
    signed-note, Format): the text is everything up to the last blank line, and every line
    after it must be a signature line. MalformedNoteError for anything else: not UTF-8, a
    control character, over MAX_NOTE_BYTES or MAX_SIGNATURES, a bad key name or base64."""
    raw = message.encode() if isinstance(message, str) else message
    if len(raw) > MAX_NOTE_BYTES:
        raise MalformedNoteError(f"note is over {MAX_NOTE_BYTES} bytes")
    try:
        decoded = raw.decode()
    except UnicodeDecodeError as exc:
        raise MalformedNoteError("note is not UTF-8") from exc
    split = decoded.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    _check_text(text)
    if not block.endswith("\n") or any(c < " " and c != "\n" for c in block):
        raise MalformedNoteError("signature block must end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has over {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def _index_keys(known: Iterable[VerifierKey]) -> dict[tuple[str, int], VerifierKey]:
    keys: dict[tuple[str, int], VerifierKey] = {}
    for key in known:
        if keys.setdefault((key.name, key.key_id), key) != key:
            raise NoteError(f"ambiguous key {key.name}+{key.key_id:08x}")
    return keys


def open_note(message: str | bytes, known: Iterable[VerifierKey]) -> Note:
    """Parses a signed note and verifies the signatures of known keys (C2SP signed-note,
    Signatures): a signature whose name and key ID match no known key is set aside unverified;
    one that matches and fails raises InvalidNoteSignatureError (the whole note is refused);
    if none verifies, UnverifiedNoteError. Repeated lines count once."""
    text, signatures = parse_note(message)
    keys = _index_keys(known)
    verified: dict[tuple[str, int], NoteSignature] = {}
    unverified: list[NoteSignature] = []
    for signature in signatures:
        key = keys.get((signature.name, signature.key_id))
        if key is None:
            if signature not in unverified:
                unverified.append(signature)
            continue
        if not _verifies(key, text, signature.signature):
            raise InvalidNoteSignatureError(f"invalid signature for key {key.vkey}")
        verified.setdefault((signature.name, signature.key_id), signature)
    if not verified:
        raise UnverifiedNoteError("note has no signature from a known key")
    return Note(text, tuple(verified.values()), tuple(unverified))


def _verifies(key: VerifierKey, text: str, signature: bytes) -> bool:
    if key.signature_type == COSIGNATURE_V1:
        if len(signature) != 8 + _ED25519_SIG:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        message = cosignature_message(text, timestamp)
        signature = signature[8:]
    else:
        message = text.encode()
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def sign_note_text(text: str, name: str, private_key: Ed25519PrivateKey) -> NoteSignature:
    """An Ed25519 note signature (type 0x01) over the text: C2SP signed-note, Ed25519."""
    _check_text(text)
    key = VerifierKey(name, ED25519, public_key_of(private_key))
    return NoteSignature(name, key.key_id, private_key.sign(text.encode()))


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The text signed by one Ed25519 key, as a signed note."""
    return format_note(text, [sign_note_text(text, name, private_key)])


# -- checkpoints (C2SP tlog-checkpoint) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedNoteError("a checkpoint's origin is one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE or len(self.root_hash) != 32:
            raise MalformedNoteError("checkpoint size or root hash out of range")
        if any(not line or "\n" in line for line in self.extensions):
            raise MalformedNoteError("extension lines must be non-empty lines")

    @property
    def text(self) -> str:
        """The note text: origin, decimal size, base64 root hash, extensions, each with a
        newline (C2SP tlog-checkpoint, Note text)."""
        root = base64.b64encode(self.root_hash).decode()
        body = "".join(f"{line}\n" for line in (self.origin, str(self.size), root))
        text = body + "".join(f"{line}\n" for line in self.extensions)
        _check_text(text)
        return text


_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")


def parse_checkpoint(text: str) -> Checkpoint:
    """Strict parse of a checkpoint's note text: at least three non-empty lines, each ending in
    a newline; size in decimal without leading zeros; the root hash 32 bytes in canonical
    base64; extension lines non-empty."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise MalformedNoteError("a checkpoint is at least three non-empty lines")
    origin, size, root, *extensions = lines
    if not _TREE_SIZE.fullmatch(size):
        raise MalformedNoteError(f"tree size {size!r} is not a decimal without leading zeros")
    root_hash = _b64decode(root)
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def open_checkpoint(
    message: str | bytes, origin: str, log_keys: Iterable[VerifierKey]
) -> tuple[Checkpoint, Note]:
    """A signed checkpoint of the log `origin`, verified with the log's keys (any other
    signature, such as a witness's, is left unverified in the note)."""
    note = open_note(message, log_keys)
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != origin:
        raise NoteError(f"checkpoint is of {checkpoint.origin!r}, not {origin!r}")
    return checkpoint, note


def sign_checkpoint(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """The checkpoint as a note signed by the log's Ed25519 key (type 0x01)."""
    return sign_note(checkpoint.text, name, private_key)


# -- cosignatures (C2SP tlog-cosignature, cosignature/v1) ---------------------------------------


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """`cosignature/v1`, `time <T>` and the whole checkpoint text (C2SP tlog-cosignature,
    Ed25519 signed message)."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("a cosignature timestamp is within 0..2**63 - 1")
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{checkpoint_text}".encode()


def cosign(
    checkpoint_text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int
) -> NoteSignature:
    """A cosignature/v1 by the witness `name`: key ID of type 0x04, then the timestamp as 8
    big-endian bytes and the Ed25519 signature of the cosigned message."""
    parse_checkpoint(checkpoint_text)
    key = VerifierKey(name, COSIGNATURE_V1, public_key_of(private_key))
    signed = private_key.sign(cosignature_message(checkpoint_text, timestamp))
    return NoteSignature(name, key.key_id, timestamp.to_bytes(8, "big") + signed)


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The time a cosignature/v1 says it was made (POSIX seconds)."""
    if len(signature.signature) != 8 + _ED25519_SIG:
        raise MalformedNoteError("a cosignature/v1 is a timestamp and an Ed25519 signature")
    return int.from_bytes(signature.signature[:8], "big")


def cosigned_by(note: Note, witnesses: Sequence[VerifierKey]) -> list[NoteSignature]:
    """The verified signatures of `note` that are cosignatures by the given witness keys."""
    ids = {(key.name, key.key_id) for key in witnesses if key.signature_type == COSIGNATURE_V1}
    return [s for s in note.verified if (s.name, s.key_id) in ids]
