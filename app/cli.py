"""`python -m app ...`: serve, worker, migrate, keys, dev."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from alembic.config import Config

from alembic import command
from app import repository
from app.config import Settings
from app.db import engine_scope
from app.logs import setup_logging
from app.service_seal import NoServiceKey, ServiceSeal, ServiceSeals

SOURCE_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("app.cli")


def migrations_root() -> Path:
    """The folder holding alembic.ini: the source checkout, else the working directory (an
    installed package, as in the container image)."""
    for root in (SOURCE_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file():
            return root
    raise SystemExit("alembic.ini not found; run from the project folder")


def alembic_config(settings: Settings) -> Config:
    root = migrations_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    return config


def migrate(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def require_urls(settings: Settings) -> None:
    missing = [
        n
        for n, v in (
            ("AUDIT_DATABASE_URL", settings.database_url),
            ("AUDIT_REDIS_URL", settings.redis_url),
        )
        if not v
    ]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} must be set (or use `make run` for dev mode)")


def serve(settings: Settings) -> None:
    import uvicorn

    from app.http_limits import HttpLimits, raise_open_files_limit
    from app.http_protocol import HttpProtocol
    from app.main import create_app
    from app.runtime import tune_gc

    require_urls(settings)
    limits = HttpLimits.from_settings(settings, raise_open_files_limit())
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # httptools, head and body in one send, within the limits (a partial pickles, so
        # worker processes get it too)
        "http": functools.partial(HttpProtocol, limits=limits),
        "timeout_keep_alive": settings.keep_alive_s,
        "access_log": False,
        "server_header": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 5,
    }
    if settings.api_processes > 1:  # each process builds its app from the same environment
        uvicorn.run(
            "app.main:create_app_from_env", factory=True, workers=settings.api_processes, **options
        )
    else:
        app = create_app(settings)
        tune_gc()
        uvicorn.run(app, **options)


async def run_worker(settings: Settings) -> None:
    """Writers only, for scale-out; SIGTERM or Ctrl-C drains in-flight batches, then exits."""
    from app.main import close_resources, open_resources
    from app.metrics import Metrics
    from app.runtime import tune_gc
    from app.workers import WriterGroup

    res = await open_resources(settings, Metrics.create())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if settings.worker_metrics_port:
        from app.worker_metrics import serve_metrics

        server = await serve_metrics(settings, res.metrics.registry)
    res.writers = WriterGroup(settings, res.engine, res.stream, res.metrics)
    res.writers.start()
    tune_gc()
    log.info("worker running %d writers; stop with SIGTERM or Ctrl-C", settings.writers)
    try:
        await stop.wait()
        log.info("stopping: draining in-flight batches")
    finally:
        if server is not None:
            server.close()
        await close_resources(res)


def key_row_seal(settings: Settings) -> ServiceSeal:
    """The seal of API key rows: the service keys are needed to make or vouch for a key."""
    try:
        return ServiceSeals.of(settings.service_key_ring).api_keys
    except NoServiceKey as exc:
        raise SystemExit(str(exc)) from exc


async def keys_create(settings: Settings, org: str, scopes: str, name: str) -> str:
    from app.auth import create_api_key, parse_scopes

    seal = key_row_seal(settings)
    async with engine_scope(settings) as engine:
        key_id, key = await create_api_key(engine, org, parse_scopes(scopes), name, seal)
    print(f"created key {key_id} for organization {org!r} with scopes {scopes}", file=sys.stderr)
    return key


async def keys_list(settings: Settings, org: str | None) -> None:
    """Every key row (never a key), and whether its MAC checks (`NOT SEALED`: refused)."""
    from app.auth import row_vouched

    seal = key_row_seal(settings)
    async with engine_scope(settings) as engine, engine.connect() as conn:
        records = await repository.list_api_keys(conn, org)
    print("id\torganization\tname\tscopes\tprefix\tcreated\trevoked\tsealed")
    for r in records:
        sealed = "yes" if row_vouched(r, seal) else "NOT SEALED"
        print(
            f"{r.id}\t{r.organization_id}\t{r.name}\t{','.join(r.scopes)}\t{r.key_prefix}…\t"
            f"{r.created_at:%Y-%m-%dT%H:%M:%SZ}\t{r.revoked_at or '-'}\t{sealed}"
        )


async def keys_seal(settings: Settings, org: str | None) -> int:
    """Vouch, with the active service key, for the active rows that have no MAC yet (made
    before rows carried one; review them first with `keys list`) and for those vouched for by
    a key since retired; each is printed. Rows whose MAC fails are left refused."""
    from app.auth import row_vouched, sealed_row

    seal = key_row_seal(settings)
    sealed = 0
    async with engine_scope(settings) as engine, engine.begin() as conn:
        for record in await repository.list_api_keys(conn, org):
            if record.revoked_at is not None or row_vouched(record, seal):
                continue
            if record.mac is not None and not row_vouched(record, seal, retired_ok=True):
                continue  # changed since it was vouched for: stays refused
            if await repository.seal_api_key(conn, sealed_row(record, seal), record.mac):
                sealed += 1
                print(f"sealed {record.id}\t{record.organization_id}\t{record.name}")
    print(f"sealed {sealed} key rows", file=sys.stderr)
    return 0


async def keys_revoke(settings: Settings, key_id: str) -> bool:
    async with engine_scope(settings) as engine, engine.begin() as conn:
        return await repository.revoke_api_key(conn, uuid.UUID(key_id))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the API with its writer task group")
    sub.add_parser("worker", help="writers only (scale-out)")
    sub.add_parser("migrate", help="apply Alembic migrations")
    dev = sub.add_parser("dev", help="serve with embedded Postgres/Redis when no URLs are set")
    dev_sub = dev.add_subparsers(dest="dev_command")
    seed = dev_sub.add_parser("seed", help="load realistic sealed events (benchmarks, demos)")
    seed.add_argument("--events", type=int, required=True)
    seed.add_argument("--orgs", type=int, default=2)
    seed.add_argument("--months", type=int, default=12)
    seed.add_argument("--batch-size", type=int, default=5000)
    seed.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    seed.add_argument("--random-seed", type=int, default=1)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--org", required=True)
    create.add_argument("--scopes", required=True, help="comma list: ingest,read,verify,admin")
    create.add_argument("--name", default="")
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--org")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    seal = keys.add_parser("seal", help="vouch for key rows made before rows carried a MAC")
    seal.add_argument("--org")
    verify = sub.add_parser("verify", help="verify the ledger; exit 0 intact, 1 not")
    verify.add_argument("--from-seq", type=int)
    verify.add_argument("--to-seq", type=int)
    verify.add_argument("--chain", type=int, help="the chain a seq range is of (default 0)")
    verify.add_argument("--start", help="RFC 3339 time; with --end instead of seqs")
    verify.add_argument("--end")
    verify.add_argument("--checkpoint", help="a file from `checkpoint export`")
    verify.add_argument("--public-key", help="Ed25519 public key (base64) to check heads with")
    verify.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for a whole-chain run (default: one per CPU)",
    )
    checkpoint = sub.add_parser("checkpoint", help="chain checkpoints").add_subparsers(
        dest="checkpoint_command", required=True
    )
    export = checkpoint.add_parser("export", help="write the newest signed head as JSON")
    export.add_argument("--out", help="file to write (default: stdout)")
    sub.add_parser("ledger-keygen", help="print a new Ed25519 key pair for ledger heads")
    partitions = sub.add_parser("partitions", help="audit_log partitions").add_subparsers(
        dest="partitions_command", required=True
    )
    ensure = partitions.add_parser("ensure", help="create monthly partitions ahead")
    ensure.add_argument("--months", type=int, help="months ahead (default: the setting)")
    prune = partitions.add_parser("prune", help="drop whole months past retention")
    prune.add_argument("--older-than", help="e.g. 6y or 18m (default: AUDIT_RETENTION)")
    prune.add_argument("--dry-run", action="store_true", help="list, change nothing")
    bundle = sub.add_parser("export-bundle", help="events of a time range with their ledger")
    bundle.add_argument("--start", required=True)
    bundle.add_argument("--end", required=True)
    bundle.add_argument("--org", help="only this organization's events (others: hashes only)")
    bundle.add_argument("out")
    offline = sub.add_parser("verify-bundle", help="verify a bundle with no database")
    offline.add_argument("bundle")
    offline.add_argument("--public-key", help="Ed25519 public key (base64)")
    return parser


def _valid_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        try:
            key = asyncio.run(keys_create(settings, args.org, args.scopes, args.name or args.org))
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        print(key)
    elif args.keys_command == "list":
        asyncio.run(keys_list(settings, args.org))
    elif args.keys_command == "seal":
        return asyncio.run(keys_seal(settings, args.org))
    elif not _valid_uuid(args.key_id):
        raise SystemExit(f"{args.key_id!r} is not a key id (see `keys list`)")
    elif not asyncio.run(keys_revoke(settings, args.key_id)):
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.key_id}")
    return 0


def _integrity(settings: Settings, args: argparse.Namespace) -> int:
    from app.integrity_cli import run_checkpoint_export, run_export_bundle, run_verify

    if args.command == "export-bundle":
        return run_export_bundle(settings, args)
    if args.command == "verify":
        if bool(args.start) != bool(args.end):
            raise SystemExit("give both --start and --end")
        return run_verify(settings, args)
    return run_checkpoint_export(settings, args.out)


async def _ensure_partitions(settings: Settings, months: int) -> int:
    async with engine_scope(settings) as engine:
        return await repository.ensure_partitions(engine, months)


def _partitions(settings: Settings, args: argparse.Namespace) -> int:
    if args.partitions_command == "prune":
        from app.retention_cli import run_prune

        return run_prune(settings, args.older_than or settings.retention, args.dry_run)
    months = args.months or settings.partitions_ahead_months
    created = asyncio.run(_ensure_partitions(settings, months))
    print(f"created {created} partitions; months ahead: {months}")
    return 0


def _seed(settings: Settings, args: argparse.Namespace) -> None:
    from app.seed import SeedPlan, run_seed

    if not settings.database_url:
        raise SystemExit("AUDIT_DATABASE_URL must be set: seed loads into that database")
    plan = SeedPlan(
        events=args.events,
        orgs=args.orgs,
        months=args.months,
        batch_size=args.batch_size,
        processes=args.processes,
        random_seed=args.random_seed,
    )
    print(json.dumps(run_seed(settings, plan)))


def _worker(settings: Settings) -> None:
    require_urls(settings)
    import uvloop  # the event loop `serve` runs on, here too

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(run_worker(settings))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    if args.command in {"ledger-keygen", "verify-bundle"}:
        from app.integrity_cli import run_ledger_keygen, run_verify_bundle

        return (
            run_ledger_keygen()
            if args.command == "ledger-keygen"
            else run_verify_bundle(settings, args)
        )
    if args.command == "dev" and args.dev_command == "seed":
        _seed(settings, args)
    elif args.command == "dev":
        from app.devmode import run_dev

        run_dev(settings)
    elif args.command == "serve":
        serve(settings)
    elif not settings.database_url:
        raise SystemExit("AUDIT_DATABASE_URL must be set")
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "worker":
        _worker(settings)
    elif args.command == "partitions":
        return _partitions(settings, args)
    elif args.command in {"verify", "checkpoint", "export-bundle"}:
        return _integrity(settings, args)
    else:
        return _keys(settings, args)
    return 0
