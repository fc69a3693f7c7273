"""The scopes an API key can hold (apart from app.apikeys.keys, so the command line's help names
them without loading the database layer)."""

from __future__ import annotations

from typing import Literal

# ingest: send events; priority: mark them priority high; read: query and export; verify: check
# the organization's part of the ledger; admin: the organization's queue and dead letters;
# operator: service-wide figures and the whole ledger (for the service's own operators); log: the
# transparency log's consistency proofs and tiles (hashes only, but every tenant's volume).
Scope = Literal["ingest", "read", "verify", "admin", "priority", "operator", "log"]

ALL_SCOPES: tuple[Scope, ...] = (
    "ingest",
    "read",
    "verify",
    "admin",
    "priority",
    "operator",
    "log",
)
