"""Settings: one env prefix (AUDIT_), read from the environment and `.env`; built on demand."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OPERATIONS_ORG = "_service"  # the organization of the service's own events, by default


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A named HMAC key; `retired_at`: from then on it only verifies what it signed before."""

    key_id: str
    secret: bytes
    retired_at: datetime | None = None

    def retired_by(self, moment: datetime) -> bool:
        return self.retired_at is not None and moment >= self.retired_at


def parse_signing_keys(raw: str) -> tuple[SigningKey, ...]:
    """Parse `id:base64secret[@retired-at][,...]`; the first key is the active one and must not
    be retired. `@2026-12-01T00:00:00Z` retires a key: whatever it signs from then on is a
    verification finding."""
    keys: list[SigningKey] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key_id, sep, rest = part.partition(":")
        if not sep or not key_id:
            raise ValueError("each key must look like id:base64secret[@retired-at]")
        encoded, at, retired = rest.partition("@")
        try:
            secret = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"key {key_id!r} is not valid base64") from exc
        if len(secret) < 16:
            raise ValueError(f"key {key_id!r} must be at least 16 bytes")
        if any(k.key_id == key_id for k in keys):
            raise ValueError(f"key id {key_id!r} appears twice")
        keys.append(SigningKey(key_id, secret, _retirement(key_id, retired) if at else None))
    if keys and keys[0].retired_at is not None:
        raise ValueError(f"the first key ({keys[0].key_id!r}) signs: it cannot be retired")
    return tuple(keys)


def _retirement(key_id: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"key {key_id!r}: retirement {text!r} is not an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"key {key_id!r}: retirement {text!r} needs a UTC offset")
    return moment


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUDIT_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = 8000
    # `serve` processes sharing the port (uvicorn workers); each runs AUDIT_WRITERS writers
    # unless AUDIT_RUN_WRITERS=false.
    api_processes: int = Field(default=1, ge=1, le=64)
    database_url: str = ""
    redis_url: str = ""
    # HMAC key rings, `id:base64secret[@retired-at][,...]`, the first key signs: events
    # (signing_keys), ledger heads and prune records (ledger_keys), and what the service vouches
    # for itself, stream entries, dead letters and API key rows (service_keys). Kept apart so
    # that each can be held only where it is needed and rotated on its own.
    signing_keys: str = Field(default="", repr=False)
    ledger_keys: str = Field(default="", repr=False)
    service_keys: str = Field(default="", repr=False)
    # Ed25519, base64 of 32 raw bytes: the private key signs ledger heads; the public key alone
    # lets verification check them (`python -m app ledger-keygen` makes a pair).
    ledger_private_key: str = Field(default="", repr=False)
    ledger_public_key: str = ""
    db_pool_size: int = 10

    # Stream layout; the prefix lets several deployments (or test runs) share one Redis.
    stream_prefix: str = "audit"
    consumer_group: str = "writers"
    # Shards of the stream (app.queue.shards): each its own hash tag (a Redis Cluster spreads them
    # over its masters) and its own ledger chain. Raise it, never lower it while shards above
    # the new count still hold events. redis_cluster: connect with the Redis Cluster protocol.
    stream_shards: int = Field(default=1, ge=1, le=64)
    redis_cluster: bool = False

    # Writer task group.
    run_writers: bool = True
    writers: int = Field(default=2, ge=0, le=64)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(default=10, ge=1, le=60_000)
    read_block_ms: int = Field(default=1000, ge=10, le=30_000)
    claim_idle_ms: int = Field(default=30_000, ge=1)
    claim_interval_ms: int = Field(default=5_000, ge=10)
    max_deliveries: int = Field(default=5, ge=1)
    retry_base_ms: int = Field(default=100, ge=1)
    retry_max_ms: int = Field(default=5_000, ge=1)
    breaker_threshold: int = Field(default=3, ge=1)
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    # Ingest limits and backpressure. Per API process, each key may send rate_limit_key_events
    # events a second and each organization rate_limit_org_events (0: no limit), with bursts of
    # twice that or a whole bulk request; an organization may hold at most org_queue_share of
    # max_queue_depth queued (all processes together). Over a limit: 429 with Retry-After.
    rate_limit_key_events: float = Field(default=20_000, ge=0)
    rate_limit_org_events: float = Field(default=50_000, ge=0)
    org_queue_share: float = Field(default=0.25, gt=0, le=1)
    max_queue_depth: int = Field(default=1_000_000, ge=1)
    max_events_per_request: int = Field(default=10_000, ge=1)
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # JSON values (objects, arrays, scalars) in one body over 1 MiB: what bounds the memory
    # of parsing it (about 64 bytes a value). A valid event holds 15-40 of them.
    max_json_values: int = Field(default=500_000, ge=1_000)
    # Bodies over 1 MiB read and parsed at once per API process, and per key (twice that per
    # organization): what bounds the memory large requests take (429 beyond).
    large_bodies_at_once: int = Field(default=16, ge=1)
    large_bodies_per_key: int = Field(default=4, ge=1)
    max_details_bytes: int = Field(default=64 * 1024, ge=64)
    max_future_skew_s: int = Field(default=900, ge=0)
    stream_entry_events: int = Field(default=500, ge=1, le=10_000)
    depth_poll_ms: int = Field(default=100, ge=10)

    # The HTTP layer (app.api.http_protocol). A request head (request line and header fields) over
    # max_header_bytes or max_header_count is refused with 431; a head not whole within
    # header_timeout_s of the connection's start or its previous answer, or a body silent for
    # body_timeout_s or unfinished body_deadline_s after its head, gets 408 and the connection
    # closes; keep_alive_s closes idle connections; a process holding max_connections refuses
    # the next at once with 503 (`serve` raises the open-files limit to its hard limit and
    # holds fewer when even that leaves no room).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_header_count: int = Field(default=100, ge=8, le=10_000)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=15.0, gt=0)
    body_deadline_s: float = Field(default=60.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)

    # Auth. A revoked key stops within auth_cache_seconds while the database answers; while it
    # cannot be reached, keys verified in the last auth_outage_grace_s keep working (so ingest
    # goes on), which bounds how long a key revoked meanwhile may too. Unknown keys are
    # remembered as unknown for auth_negative_cache_s. A lookup the database has not answered
    # within auth_lookup_timeout_s (a lock, an overloaded server) gives up.
    auth_cache_seconds: float = Field(default=10.0, ge=0)
    auth_outage_grace_s: float = Field(default=120.0, ge=0)
    auth_negative_cache_s: float = Field(default=2.0, ge=0)
    auth_lookup_timeout_s: float = Field(default=5.0, gt=0)
    metrics_token: str = Field(default="", repr=False)

    # Long reads, per API process, on connections of their own (so they never take the pool
    # that queries and key lookups use): exports at once in all, per key, per organization;
    # a client that takes no bytes for export_send_timeout_s has its export (or verification)
    # ended. Verifications likewise.
    export_concurrency: int = Field(default=4, ge=1, le=256)
    export_per_key: int = Field(default=2, ge=1)
    export_per_org: int = Field(default=3, ge=1)
    export_send_timeout_s: float = Field(default=30.0, gt=0)
    verify_concurrency: int = Field(default=2, ge=1, le=64)
    verify_per_org: int = Field(default=1, ge=1)

    # Storage.
    partitions_ahead_months: int = Field(default=3, ge=1, le=24)
    # `partitions prune` drops whole months older than this (`6y`, `18m`); HIPAA asks for six
    # years of audit records.
    retention: str = "6y"
    require_noeviction: bool = True

    # `python -m app worker` serves its Prometheus metrics on this port (0: off).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where it listens: loopback unless set (it answers with AUDIT_METRICS_TOKEN when that is set).
    worker_metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # One JSON line per HTTP request on logger app.access: method, route template, status,
    # duration and API key id; never paths' values, queries or bodies (they may hold PHI).
    access_log: bool = True

    # The service's own performance thresholds: every threshold_check_s each process compares
    # what it measures with them and records a violation as a sealed audit event
    # (`performance.threshold.violation`, of organization operations_org), at most one per
    # threshold and process every threshold_event_interval_s (the others are counted in it).
    # Key retirements are sealed into each chain's log as events of operations_org too
    # (app.ledger.rotation), where verification looks for them.
    threshold_events: bool = True
    threshold_check_s: float = Field(default=10.0, gt=0)
    threshold_event_interval_s: float = Field(default=300.0, ge=0)
    threshold_queue_depth: int = Field(default=1000, ge=0)
    threshold_lag_p99_s: float = Field(default=1.0, gt=0)
    threshold_error_rate: float = Field(default=0.05, gt=0, le=1)
    threshold_rss_mb: int = Field(default=512, ge=1)
    operations_org: str = Field(default=OPERATIONS_ORG, min_length=1, max_length=128)

    # The compliance console (/console): how long a session lasts, and whether its cookie is
    # Secure (sent over HTTPS only; browsers make an exception for http://localhost).
    console_session_s: int = Field(default=1800, ge=60, le=86400)
    console_secure_cookie: bool = True

    # `python -m app syslog` (IHE ATNA): where it listens, which senders it accepts
    # (`address=organization` or, with TLS, `CN=name=organization`, comma-separated), TLS
    # (a certificate and key; a CA to require client certificates), and its bounds. A peer's
    # address is checked before any TLS handshake: an address source, or one in
    # syslog_allowed_networks (CIDR; empty with certificate-name sources: any address may try a
    # handshake). Authenticated connections (an address source, or once its certificate is
    # checked) beyond syslog_max_connections, or syslog_max_connections_per_source from one
    # address (an IPv6 /64), are closed at once; those still in a TLS handshake have their own,
    # smaller budget, syslog_max_handshakes (its oldest making way for a newcomer) and
    # syslog_max_handshakes_per_source; a handshake not done in syslog_tls_handshake_timeout_s
    # is dropped. Rejected messages go to the sender's dead
    # letters while its organization holds fewer than syslog_max_dead_letters and at most
    # syslog_max_dead_letter_bytes of those set aside; past either they are counted and dropped.
    syslog_host: str = "127.0.0.1"
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_sources: str = ""
    syslog_tls_cert: str = ""
    syslog_tls_key: str = ""
    syslog_tls_ca: str = ""
    syslog_max_message_bytes: int = Field(default=65536, ge=1024, le=1048576)
    syslog_idle_timeout_s: float = Field(default=300.0, gt=0)
    syslog_allowed_networks: str = ""
    syslog_tls_handshake_timeout_s: float = Field(default=5.0, gt=0, le=120)
    syslog_max_connections: int = Field(default=512, ge=1)
    syslog_max_connections_per_source: int = Field(default=32, ge=1)
    syslog_max_handshakes: int = Field(default=64, ge=1)
    syslog_max_handshakes_per_source: int = Field(default=8, ge=1)
    syslog_max_dead_letters: int = Field(default=10_000, ge=1)
    syslog_max_dead_letter_bytes: int = Field(default=64 * 1024 * 1024, ge=1)

    # `python -m app witness`: a transparency log witness (C2SP tlog-witness). Where it listens,
    # its state and key directory, its name and Ed25519 key (a signer key string
    # `PRIVATE+KEY+<name>+...`; empty: a key file in witness_dir, made on first start), and the
    # logs it witnesses, `origin=<vkey>,...` (a log's Ed25519 note key; app.witness parses them).
    witness_host: str = "127.0.0.1"
    witness_port: int = Field(default=8380, ge=1, le=65535)
    witness_dir: str = ".data/witness"
    witness_name: str = ""
    witness_key: str = Field(default="", repr=False)
    witness_logs: str = ""

    # The log's witnesses, `<submission prefix URL>=<vkey>,...` (cosignature/v1 keys), how many
    # cosignatures a checkpoint needs, and how long each witness has to answer
    # (app.ledger.witnessing parses and uses them).
    witnesses: str = ""
    witness_quorum: int = Field(default=1, ge=1, le=64)
    witness_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # Checkpoints of each chain's log (C2SP tlog-checkpoint, signed with the Ed25519 ledger key):
    # the origin every chain's origin line starts with (`<log_origin>/chain/<chain>`), how often
    # a new one is made while the log grows, the directory outside the database where each is
    # appended too, and how long the log may grow without a checkpoint cosigned by a quorum
    # before that is a threshold violation.
    log_origin: str = Field(default="audit-ingest.localhost/log", min_length=1, max_length=200)
    checkpoint_interval_s: float = Field(default=5.0, ge=0.05, le=3600)
    checkpoint_dir: str = ".data/checkpoints"
    threshold_unwitnessed_s: float = Field(default=120.0, gt=0)

    # The watch (app.watch): the writer process holding its lock examines every sealed batch
    # for cases of inappropriate access, stores each case once and records it as a sealed
    # audit.alert.raised event; every watch_interval_s, and at once while it is behind.
    watch_enabled: bool = True
    watch_interval_s: float = Field(default=0.25, ge=0.01, le=60)

    @field_validator("signing_keys", "ledger_keys", "service_keys")
    @classmethod
    def _check_key_ring(cls, value: str) -> str:
        parse_signing_keys(value)
        return value

    @field_validator("syslog_sources")
    @classmethod
    def _check_syslog_sources(cls, value: str) -> str:
        parse_syslog_sources(value)
        return value

    @field_validator("syslog_allowed_networks")
    @classmethod
    def _check_syslog_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("witnesses", "witness_logs")
    @classmethod
    def _check_pairs(cls, value: str) -> str:
        parse_pairs(value)
        return value

    @model_validator(mode="after")
    def _check_quorum(self) -> Settings:
        count = len(parse_pairs(self.witnesses))
        if count and self.witness_quorum > count:
            raise ValueError(f"AUDIT_WITNESS_QUORUM {self.witness_quorum} of {count} witnesses")
        return self

    @field_validator("log_origin")
    @classmethod
    def _check_origin(cls, value: str) -> str:
        if not value.isprintable() or any(c.isspace() for c in value) or "+" in value:
            raise ValueError("AUDIT_LOG_ORIGIN: printable, no spaces or plus signs")
        return value

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        parse_retention(value)
        return value

    @cached_property
    def signing_key_ring(self) -> tuple[SigningKey, ...]:
        return parse_signing_keys(self.signing_keys)

    @property
    def signing_keys_by_id(self) -> dict[str, SigningKey]:
        return {key.key_id: key for key in self.signing_key_ring}

    @cached_property
    def ledger_key_ring(self) -> tuple[SigningKey, ...]:
        return parse_signing_keys(self.ledger_keys)

    @property
    def ledger_keys_by_id(self) -> dict[str, SigningKey]:
        return {key.key_id: key for key in self.ledger_key_ring}

    @cached_property
    def service_key_ring(self) -> tuple[SigningKey, ...]:
        return parse_signing_keys(self.service_keys)

    @property
    def asyncpg_dsn(self) -> str:
        """The plain `postgresql://` URL that asyncpg and libpq accept."""
        return plain_postgres_url(self.database_url)

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+asyncpg://" + self.asyncpg_dsn.split("://", 1)[1]


def plain_postgres_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("database URL must look like postgresql://user@host:port/db")
    if scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError(f"unsupported database URL scheme {scheme!r}")
    return "postgresql://" + rest


RETENTION = re.compile(r"^\s*(\d+)\s*(y|m)\s*$")


def parse_retention(text: str) -> int:
    """`6y` or `18m` as a number of months (at least one)."""
    match = RETENTION.match(text.lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"retention {text!r} must look like 6y or 18m (years or months)")
    number = int(match.group(1))
    return number * 12 if match.group(2) == "y" else number


def parse_syslog_sources(text: str) -> dict[str, str]:
    """AUDIT_SYSLOG_SOURCES, `address=organization,CN=name=organization,...`, as a map from a
    source (an address, or `CN=` and a certificate's common name) to its organization."""
    sources: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, organization = item.rpartition("=")
        if not sep or not source.strip() or not organization.strip():
            raise ValueError(f"syslog source {item!r} is not source=organization")
        sources[source.strip()] = organization.strip()
    return sources


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (`10.1.0.0/16,10.2.0.7`)."""
    networks: list[Network] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an address or a CIDR network") from exc
    return tuple(networks)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """`name=value,...` (AUDIT_WITNESSES, AUDIT_WITNESS_LOGS) as (name, value) pairs, split at
    each item's first `=`; the caller parses the values."""
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{item!r} is not name=value")
        pairs.append((name.strip(), value.strip()))
    return pairs
