"""API keys are random and stored only as hashes; scopes are parsed strictly."""

from __future__ import annotations

import pytest

from app.apikeys.keys import hash_api_key, new_api_key, parse_scopes


def test_api_keys_are_random_and_hashed() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("aik_") and len(a) > 40
    assert hash_api_key(a) != hash_api_key(b) and len(hash_api_key(a)) == 32
    assert parse_scopes("read, ingest,read") == ["ingest", "read"]
    for bad in ("", "read,root"):
        with pytest.raises(ValueError):
            parse_scopes(bad)
