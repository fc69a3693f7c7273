"""Golden vectors and properties of app.ledger.notes: C2SP signed-note, tlog-checkpoint and
tlog-cosignature (cosignature/v1).

Where the vectors come from:
- PeterNeumann and EnochRoot keys, the signed quote and the malformed notes:
  golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestNewSigner, TestSign, TestOpen).
- example.com/foo: the example of C2SP signed-note, section Verifier keys.
- The go.sum database checkpoint of size 31700353 signed by sum.golang.org: transparency-dev/tessera
  internal/parse/parse_test.go; sum.golang.org's key as Go's cmd/go knows it.
- The "hello world" tree note: golang.org/x/mod sumdb/tlog/note_test.go (TestFormatTree).
- The behind-the-sofa checkpoint, its witness line and the cosigned message: C2SP
  tlog-cosignature (the key behind the witness line is not published, so only its key ID and
  timestamp are checked).
- The Wit1 cosignature: made by this implementation with the Wit1 test key of
  transparency-dev/tessera (append_lifecycle_test.go), and checked apart from it: OpenSSL's
  `pkeyutl -sign -rawin` over the message written out with printf gives the same signature, and
  sha256sum over "Wit1\n", 0x04 and the public key the same key ID (9b3fb2d5). Ed25519 signing is
  deterministic, so any implementation of cosignature/v1 must produce the same line.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.merkle import leaf_hash
from app.ledger.notes import (
    COSIGNATURE_V1,
    ED25519,
    EM_DASH,
    MAX_NOTE_BYTES,
    Checkpoint,
    InvalidNoteSignatureError,
    MalformedNoteError,
    NoteError,
    NoteSignature,
    UnverifiedNoteError,
    VerifierKey,
    cosign,
    cosignature_message,
    cosignature_timestamp,
    cosigned_by,
    format_note,
    key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    public_key_of,
    sign_checkpoint,
    sign_note,
)
from app.ledger.tlog import EMPTY_ROOT
from tests.strategies import MODERATE

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
QUOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvq"
    "fqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM_DASH} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTG"
    "wnWLox33WWd1RvMc+QQ=\n"
)

FOO_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
FOO_NOTE = (
    f"This is an example message.\n\n{EM_DASH} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6T"
    "fXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n31700353\nqINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=\n\n"
    f"{EM_DASH} sum.golang.org Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/"
    "C3YI8oW9/C8DJ87F61QqspBYwM=\n"
)

SOFA_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_WITNESS_LINE = (
    f"{EM_DASH} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB"
    "9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SOFA_TIME = 1679315147

WIT1_SKEY = "PRIVATE+KEY+Wit1+55ee4561+AeadRiG7XM4XiieCHzD8lxysXMwcViy5nYsoXURWGrlE"
WIT1_COSIGNATURE = (
    f"{EM_DASH} Wit1 mz+y1QAAAABkGFDLM1oW1Cge43o711GHdmI8QPG1MhuOkQO1kJrg6IUc0qRplRuA9XSmt/d3Y7Nu"
    "jslnO7vHC5/XpLwYsn8xvJ8eAQ==\n"
)

PETER = parse_verifier_key(PETER_VKEY)
ENOCH = parse_verifier_key(ENOCH_VKEY)


def refused(parse: Callable[[str], object], key: str) -> bool:
    try:
        parse(key)
    except MalformedNoteError:
        return True
    return False


# -- keys ---------------------------------------------------------------------------------------


def test_verifier_key_round_trips_and_its_id_is_the_spec_hash() -> None:
    assert PETER.name == "PeterNeumann"
    assert PETER.signature_type == ED25519
    assert PETER.key_id == 0xC74F20A3 == key_id("PeterNeumann", ED25519, PETER.public_key)
    assert PETER.vkey == PETER_VKEY
    assert parse_verifier_key(FOO_VKEY).vkey == FOO_VKEY


def test_every_mangled_verifier_key_is_refused() -> None:
    # Every proper substring and every single character bumped by one (note_test.go).
    manglings = {
        PETER_VKEY[i:j]
        for i in range(len(PETER_VKEY) + 1)
        for j in range(i + 1, len(PETER_VKEY) + 1)
        if (i, j) != (0, len(PETER_VKEY))
    }
    manglings |= {
        PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1 :] for i, c in enumerate(PETER_VKEY)
    }
    manglings |= {
        # A key of the wrong length, and an unknown algorithm, each with the key ID made to fit.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    }
    accepted = [k for k in manglings if not refused(parse_verifier_key, k)]
    assert accepted == []


def test_signer_key_gives_the_verifier_key_and_manglings_are_refused() -> None:
    name, private_key = parse_signer_key(PETER_SKEY)
    assert VerifierKey(name, ED25519, public_key_of(private_key)) == PETER
    manglings = {
        PETER_SKEY[i:j]
        for i in range(len(PETER_SKEY) + 1)
        for j in range(i + 1, len(PETER_SKEY) + 1)
        if (i, j) != (0, len(PETER_SKEY))
    }
    manglings |= {
        PETER_SKEY[:i] + chr(ord(c) + 1) + PETER_SKEY[i + 1 :] for i, c in enumerate(PETER_SKEY)
    }
    accepted = [k for k in manglings if not refused(parse_signer_key, k)]
    assert accepted == []


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u2003b", "a\tb", "a\nb"])
def test_key_names_with_spaces_or_plus_are_refused(name: str) -> None:
    with pytest.raises(MalformedNoteError):
        VerifierKey(name, ED25519, PETER.public_key)
    with pytest.raises(MalformedNoteError):
        parse_note(QUOTE + "\n" + PETER_SIG.replace("PeterNeumann", name))


# -- signed notes -------------------------------------------------------------------------------


def test_signing_the_quote_gives_go_s_note_byte_for_byte() -> None:
    name, private_key = parse_signer_key(PETER_SKEY)
    assert sign_note(QUOTE, name, private_key) == QUOTE + "\n" + PETER_SIG


def test_the_signed_note_spec_example_verifies() -> None:
    note = open_note(FOO_NOTE, [parse_verifier_key(FOO_VKEY)])
    assert note.text == "This is an example message.\n"
    assert [s.key_id for s in note.verified] == [0x530D903A]


def test_open_sorts_signatures_into_verified_and_unknown() -> None:
    both = QUOTE + "\n" + PETER_SIG + ENOCH_SIG
    note = open_note(both, [PETER])
    assert note.text == QUOTE
    assert [s.name for s in note.verified] == ["PeterNeumann"]
    assert [s.name for s in note.unverified] == ["EnochRoot"]
    note = open_note(both, [PETER, ENOCH])
    assert [s.name for s in note.verified] == ["PeterNeumann", "EnochRoot"]
    assert note.unverified == ()
    with pytest.raises(UnverifiedNoteError):
        open_note(both, [])
    # The same key listed twice is one key.
    assert open_note(QUOTE + "\n" + ENOCH_SIG, [ENOCH, PETER, ENOCH]).verified


def test_a_bad_signature_by_a_known_key_refuses_the_note() -> None:
    broken = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(InvalidNoteSignatureError):
        open_note(QUOTE + "\n" + broken, [PETER])
    # The same bad signature from a key nobody asked about is only set aside.
    enoch_broken = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    note = open_note(
        QUOTE + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_broken, [PETER]
    )
    assert len(note.verified) == 1
    assert len(note.unverified) == 2


def test_unknown_names_and_key_ids_are_not_verified() -> None:
    misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    wrong_id = PETER_SIG.replace("x08g", "xxxx")
    for line in (misnamed, wrong_id):
        with pytest.raises(UnverifiedNoteError):
            open_note(QUOTE + "\n" + line, [PETER])


MALFORMED_NOTES = [
    QUOTE,
    QUOTE + "\n",
    QUOTE + "\n" + PETER_SIG[:-1],
    "\x01" + QUOTE + "\n" + PETER_SIG,
    QUOTE + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
    QUOTE + "\n" + PETER_SIG + "Unexpected line.\n",
    QUOTE + "\n" + PETER_SIG * 101,
    QUOTE + "\n" + PETER_SIG.replace(EM_DASH, "-"),
    QUOTE + "\n" + PETER_SIG.replace("=\n", "\n"),  # unpadded base64
    QUOTE + "\n" + f"{EM_DASH} PeterNeumann AAAA\n",  # no byte after the key ID
    QUOTE + "\n" + PETER_SIG.replace("\n", "\r\n"),
    "x" * MAX_NOTE_BYTES + "\n\n" + PETER_SIG,
]


@pytest.mark.parametrize("message", MALFORMED_NOTES)
def test_malformed_notes_are_refused(message: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(message, [PETER])


def test_notes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(MalformedNoteError):
        open_note(b"\xff" + (QUOTE + "\n" + PETER_SIG).encode(), [PETER])


def test_text_may_hold_blank_lines_and_signatures_follow_the_last() -> None:
    name, private_key = parse_signer_key(PETER_SKEY)
    text = "one\n\ntwo\n"
    note = open_note(sign_note(text, name, private_key), [PETER])
    assert note.text == text


# -- checkpoints --------------------------------------------------------------------------------


def test_go_sum_database_checkpoint_verifies_with_its_public_key() -> None:
    checkpoint, note = open_checkpoint(
        SUMDB_CHECKPOINT, "go.sum database tree", [parse_verifier_key(SUMDB_VKEY)]
    )
    assert checkpoint.size == 31700353
    assert checkpoint.text == note.text
    with pytest.raises(NoteError):
        open_checkpoint(SUMDB_CHECKPOINT, "example.com/log", [parse_verifier_key(SUMDB_VKEY)])
    with pytest.raises(InvalidNoteSignatureError):
        open_note(
            SUMDB_CHECKPOINT.replace("31700353", "31700354"), [parse_verifier_key(SUMDB_VKEY)]
        )


def test_checkpoint_text_of_the_go_tree_note() -> None:
    golden = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
    checkpoint = Checkpoint("go.sum database tree", 123456789012, leaf_hash(b"hello world"))
    assert checkpoint.text == golden
    assert parse_checkpoint(golden) == checkpoint
    extended = Checkpoint("log", 0, EMPTY_ROOT, ("ext one", "ext two"))
    assert parse_checkpoint(extended.text) == extended
    assert extended.text.endswith("\next one\next two\n")


ROOT = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

MALFORMED_CHECKPOINTS = [
    "not three lines\n",
    f"log\n1\n{ROOT}",  # no final newline
    f"\n1\n{ROOT}\n",
    f"log\n0xabcdef\n{ROOT}\n",
    f"log\n012\n{ROOT}\n",
    f"log\n+12\n{ROOT}\n",
    f"log\n-1\n{ROOT}\n",
    f"log\n 1\n{ROOT}\n",
    f"log\n{2**64}\n{ROOT}\n",
    "log\n1\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n",
    "log\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=\n",  # non-canonical padding bits
    "log\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuA==\n",  # 31 bytes
    f"log\n1\n{ROOT}\n\nextension\n",  # empty line among extensions
    f"log\n1\n{ROOT}\nbad\x07extension\n",
]


@pytest.mark.parametrize("text", MALFORMED_CHECKPOINTS)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        parse_checkpoint(text)


def test_a_signed_checkpoint_opens_with_the_log_key_only() -> None:
    name, private_key = parse_signer_key(PETER_SKEY)
    checkpoint = Checkpoint("PeterNeumann", 8, EMPTY_ROOT)
    signed = sign_checkpoint(checkpoint, name, private_key)
    assert open_checkpoint(signed, "PeterNeumann", [PETER])[0] == checkpoint
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(signed, "PeterNeumann", [ENOCH])


# -- cosignatures -------------------------------------------------------------------------------


def test_the_cosignature_spec_example() -> None:
    text, signatures = parse_note(
        SOFA_TEXT
        + f"\n{EM_DASH} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDe"
        "OoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n" + SOFA_WITNESS_LINE
    )
    witness = signatures[1]
    assert witness.key_id == 0x8D66CF3F
    assert cosignature_timestamp(witness) == SOFA_TIME
    assert cosignature_message(text, SOFA_TIME) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )


def test_a_witness_cosignature_vector() -> None:
    name, private_key = parse_signer_key(WIT1_SKEY)
    cosignature = cosign(SOFA_TEXT, name, private_key, SOFA_TIME)
    assert cosignature.line == WIT1_COSIGNATURE
    witness = VerifierKey(name, COSIGNATURE_V1, public_key_of(private_key))
    assert cosignature.key_id == key_id(name, 0x04, public_key_of(private_key)) != 0x55EE4561
    note = open_note(SOFA_TEXT + "\n" + WIT1_COSIGNATURE, [witness])
    assert cosigned_by(note, [witness]) == [cosignature]
    # The witness key as a plain note key (type 0x01) has another key ID: not this signature.
    as_note_key = VerifierKey(name, ED25519, public_key_of(private_key))
    with pytest.raises(UnverifiedNoteError):
        open_note(SOFA_TEXT + "\n" + WIT1_COSIGNATURE, [as_note_key])


def test_a_cosignature_binds_its_time_and_the_whole_checkpoint() -> None:
    name, private_key = parse_signer_key(WIT1_SKEY)
    witness = VerifierKey(name, COSIGNATURE_V1, public_key_of(private_key))
    good = cosign(SOFA_TEXT, name, private_key, SOFA_TIME)
    later = NoteSignature(
        good.name, good.key_id, (SOFA_TIME + 1).to_bytes(8, "big") + good.signature[8:]
    )
    other_text = SOFA_TEXT.replace("20852163", "20852164")
    for text, signature in ((SOFA_TEXT, later), (other_text, good)):
        with pytest.raises(InvalidNoteSignatureError):
            open_note(format_note(text, [signature]), [witness])
    truncated = NoteSignature(good.name, good.key_id, good.signature[:-1])
    with pytest.raises(InvalidNoteSignatureError):
        open_note(format_note(SOFA_TEXT, [truncated]), [witness])


def test_log_signature_and_cosignatures_on_one_checkpoint() -> None:
    log_name, log_key = parse_signer_key(PETER_SKEY)
    wit_name, wit_key = parse_signer_key(WIT1_SKEY)
    witness = VerifierKey(wit_name, COSIGNATURE_V1, public_key_of(wit_key))
    checkpoint = Checkpoint("PeterNeumann", 20852163, EMPTY_ROOT)
    signed = sign_checkpoint(checkpoint, log_name, log_key)
    cosigned = signed + cosign(checkpoint.text, wit_name, wit_key, SOFA_TIME).line
    _, note = open_checkpoint(cosigned, "PeterNeumann", [PETER])
    assert [s.name for s in note.unverified] == [wit_name]
    note = open_note(cosigned, [PETER, witness])
    assert [s.name for s in cosigned_by(note, [witness])] == [wit_name]


# -- properties ---------------------------------------------------------------------------------

NAMES = st.text(
    st.characters(codec="utf-8", exclude_characters="+", exclude_categories=("Cc", "Cs", "Zs")),
    min_size=1,
    max_size=20,
).filter(lambda name: not any(c.isspace() for c in name))
LINES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=30
)
TEXTS = st.lists(LINES, min_size=1, max_size=5).map(lambda lines: "\n".join(lines) + "\n")


def flip(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


@MODERATE
@given(NAMES, st.binary(min_size=32, max_size=32), TEXTS, st.integers(0, 2**16))
def test_signed_notes_verify_and_no_altered_signature_does(
    name: str, seed: bytes, text: str, bit: int
) -> None:
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    key = VerifierKey(name, ED25519, public_key_of(private_key))
    assert parse_verifier_key(key.vkey) == key
    signed = sign_note(text, name, private_key)
    assert open_note(signed, [key]).text == text
    _, [signature] = parse_note(signed)
    altered = NoteSignature(name, key.key_id, flip(signature.signature, bit))
    with pytest.raises(InvalidNoteSignatureError):
        open_note(format_note(text, [altered]), [key])
    with pytest.raises(InvalidNoteSignatureError):
        open_note("x" + signed, [key])


@MODERATE
@given(
    NAMES,
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**63 - 1),
)
def test_cosignatures_verify_and_carry_their_time(
    name: str, seed: bytes, size: int, root: bytes, timestamp: int
) -> None:
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    witness = VerifierKey(name, COSIGNATURE_V1, public_key_of(private_key))
    assert parse_verifier_key(witness.vkey) == witness
    checkpoint = Checkpoint("example.com/log", size, root)
    assert parse_checkpoint(checkpoint.text) == checkpoint
    cosignature = cosign(checkpoint.text, name, private_key, timestamp)
    note = open_note(format_note(checkpoint.text, [cosignature]), [witness])
    assert cosigned_by(note, [witness]) == [cosignature]
    assert cosignature_timestamp(cosignature) == timestamp


@MODERATE
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t + "\n\n" + PETER_SIG))
def test_arbitrary_input_is_a_note_error_or_a_note(message: bytes | str) -> None:
    try:
        open_note(message, [PETER])
    except NoteError:
        pass


def test_sign_and_cosign_refuse_what_they_cannot_spell() -> None:
    _, private_key = parse_signer_key(PETER_SKEY)
    for text in ("no final newline", "a\x00b\n"):
        with pytest.raises(MalformedNoteError):
            sign_note(text, "name", private_key)
    with pytest.raises(MalformedNoteError):
        sign_note(QUOTE, "bad name", private_key)
    with pytest.raises(MalformedNoteError):
        cosign("not a checkpoint\n", "w", private_key, 0)
    with pytest.raises(ValueError):
        cosign(SOFA_TEXT, "w", private_key, 2**63)
    assert base64.b64decode(PETER_VKEY.split("+", 2)[2])[0] == ED25519
