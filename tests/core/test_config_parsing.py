"""Settings parsing: signing keys and database URLs."""

from __future__ import annotations

import base64

import pytest

from app.core.config import parse_signing_keys, plain_postgres_url


def test_signing_keys_parse_and_reject_bad_input() -> None:
    secret = base64.b64encode(b"s" * 32).decode()
    keys = parse_signing_keys(f"new:{secret}, old:{secret}")
    assert [k.key_id for k in keys] == ["new", "old"]
    assert keys[0].secret == b"s" * 32
    for bad in ("nocolon", f"a:{secret},a:{secret}", "a:not-base64!", "a:" + "c2hvcnQ="):
        with pytest.raises(ValueError):
            parse_signing_keys(bad)


def test_database_urls_are_normalized() -> None:
    assert plain_postgres_url("postgres://u@h:5/d") == "postgresql://u@h:5/d"
    with pytest.raises(ValueError):
        plain_postgres_url("mysql://u@h/d")
