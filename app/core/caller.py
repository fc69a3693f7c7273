"""Who asks: the API key a request or a console session authenticated with, its organization
and its scopes. The services below the HTTP layer take it as it is, never a request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    organization_id: str
    scopes: frozenset[str]
