"""The add-checkpoint wire format (C2SP tlog-witness, with the spec's example request), the
witness list a log is configured with, and signer key strings."""

from __future__ import annotations

import base64

import pytest

from app.core.config import Settings
from app.ledger.notes import format_signer_key, parse_signer_key
from app.ledger.witnessing import (
    MAX_PROOF_LINES,
    AddCheckpoint,
    WitnessProtocolError,
    format_add_checkpoint,
    format_tlog_size,
    parse_add_checkpoint,
    parse_tlog_size,
    parse_witnesses,
)

# C2SP tlog-witness, add-checkpoint, the example request body.
SPEC_EXAMPLE = """old 20852014
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
\u2014 example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=
""".encode()  # noqa: E501

# golang.org/x/mod sumdb/note's test key (note_test.go).
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
WITNESS_VKEY = "example.org/w1+02f596de+BJUrAiODo9jQAvQWU6j3dxDgBBWz9f4TAlJGR/JpE7Br"
LOG_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"


def test_the_spec_example_parses_and_formats_back() -> None:
    request = parse_add_checkpoint(SPEC_EXAMPLE)
    assert request.old_size == 20852014
    assert [base64.b64encode(h).decode()[:6] for h in request.proof] == [
        "PlRNCr",
        "jrJZDm",
        "5+pKlU",
        "/6WVhP",
    ]
    assert request.checkpoint.startswith(b"example.com/behind-the-sofa\n20852163\n")
    assert format_add_checkpoint(20852014, request.proof, request.checkpoint) == SPEC_EXAMPLE
    assert parse_add_checkpoint(b"old 0\n\nnote") == AddCheckpoint(0, (), b"note")


@pytest.mark.parametrize(
    "body",
    [
        b"old 01\n\nnote",  # a leading zero
        b"old -1\n\nnote",
        b"old 18446744073709551616\n\nnote",  # over 2**64 - 1
        b"Old 1\n\nnote",
        b"old 1 \n\nnote",
        b"old 1\nnote",  # no empty line
        b"old 1\n" + b"AAAA\n\nnote",  # not 32 bytes
        b"old 1\n" + base64.b64encode(bytes(31)) + b"=\n\nnote",  # not canonical
        b"old 1\n" + base64.b64encode(bytes(32)) + b" \n\nnote",
        b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * (MAX_PROOF_LINES + 1) + b"\nnote",
    ],
)
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(WitnessProtocolError):
        parse_add_checkpoint(body)


def test_tlog_size_bodies() -> None:
    assert format_tlog_size(12) == b"12\n" and parse_tlog_size(b"12\n") == 12
    for body in (b"12", b"012\n", b"-1\n", b"\n", b"1 2\n"):
        with pytest.raises(WitnessProtocolError):
            parse_tlog_size(body)


def test_witnesses_setting() -> None:
    [witness] = parse_witnesses(f" https://w1.example/prefix/ = {WITNESS_VKEY} ,")
    assert witness.url == "https://w1.example/prefix" and witness.name == "example.org/w1"
    assert witness.key.vkey == WITNESS_VKEY
    assert parse_witnesses("") == ()
    for wrong, why in [
        (f"https://a={LOG_VKEY}", "not a cosignature/v1 key"),
        (f"ftp://a={WITNESS_VKEY}", "not http"),
        (f"https://a={WITNESS_VKEY},https://b={WITNESS_VKEY}", "named twice"),
        ("https://a=witness+00000000+BAAA", "witness 'https://a'"),
        ("https://a", "not name=value"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_witnesses(wrong)


def test_quorum_is_at_most_the_number_of_witnesses() -> None:
    one = f"https://a={WITNESS_VKEY}"
    assert Settings(witnesses=one, _env_file=None).witness_quorum == 1
    with pytest.raises(ValueError, match="AUDIT_WITNESS_QUORUM 2 of 1 witnesses"):
        Settings(witnesses=one, witness_quorum=2, _env_file=None)
    with pytest.raises(ValueError, match="not name=value"):
        Settings(witness_logs="origin-without-key", _env_file=None)


def test_signer_key_strings_round_trip() -> None:
    name, key = parse_signer_key(PETER_SKEY)
    assert format_signer_key(name, key) == PETER_SKEY
