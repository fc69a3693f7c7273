"""`python -m app <command>`: the service, its writers, its database and keys, its ledger.

Each command's module is imported when that command runs: a command loads only what it uses
(`verify` needs no SQLAlchemy, Alembic or web framework, which took most of a second to load).
"""

from __future__ import annotations

import argparse
import os

from app.apikeys.scopes import ALL_SCOPES
from app.core.config import Settings
from app.core.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the API with its writer task group")
    sub.add_parser("worker", help="writers only (scale-out)")
    sub.add_parser("migrate", help="apply Alembic migrations")
    sub.add_parser("syslog", help="the IHE ATNA syslog receiver (RFC 5424 over TCP or TLS)")
    witness = sub.add_parser("witness", help="a transparency log witness (C2SP tlog-witness)")
    witness.add_subparsers(dest="witness_command").add_parser(
        "vkey", help="print the witness's verifier key (made on first use)"
    )
    dev = sub.add_parser("dev", help="serve with embedded Postgres/Redis when no URLs are set")
    dev.add_argument("--demo", action="store_true", help="load the demo set once (make run DEMO=1)")
    dev_sub = dev.add_subparsers(dest="dev_command")
    dev_sub.add_parser(
        "env", help='shell exports for the dev setup: eval "$(python -m app dev env)"'
    )
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
    create.add_argument("--scopes", required=True, help="comma list of: " + ",".join(ALL_SCOPES))
    create.add_argument("--name", default="")
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--org")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    seal = keys.add_parser("seal", help="vouch for key rows made before rows carried a MAC")
    seal.add_argument("--org")
    verify = sub.add_parser(
        "verify", help="verify the ledger; exit 0 intact and anchored, 1 broken, 3 not anchored"
    )
    verify.add_argument("--from-seq", type=int)
    verify.add_argument("--to-seq", type=int)
    verify.add_argument("--chain", type=int, help="the chain a seq range is of (default 0)")
    verify.add_argument("--start", help="RFC 3339 time; with --end instead of seqs")
    verify.add_argument("--end")
    verify.add_argument(
        "--checkpoint",
        help="a cosigned checkpoint note to anchor to, or a JSON head from `checkpoint export`",
    )
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
    checkpoint.add_parser(
        "vkeys", help="print AUDIT_WITNESS_LOGS for this log's witnesses: origin=vkey per chain"
    )
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
    offline = sub.add_parser(
        "verify-bundle",
        help="verify a bundle with no database; exit 0 intact and anchored, 1 broken, 3 not "
        "anchored",
    )
    offline.add_argument("bundle")
    offline.add_argument("--public-key", help="Ed25519 public key (base64)")
    offline.add_argument(
        "--witnesses",
        help="the witness keys you trust, <vkey>,... (cosignature/v1); default: those of "
        "AUDIT_WITNESSES when set, else the bundle's own (named, to compare)",
    )
    offline.add_argument(
        "--quorum",
        type=int,
        help="cosignatures a checkpoint needs (default: AUDIT_WITNESS_QUORUM with AUDIT_WITNESSES, "
        "else 1)",
    )
    parser.epilog = "commands:\n" + "\n".join(
        f"  {name:<22} {text}" for name, text in command_list(parser)
    )
    return parser


def command_list(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str]]:
    """Every command and subcommand with its help line, in the order they were added."""
    found: list[tuple[str, str]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for choice in action._choices_actions:
            name = f"{prefix}{choice.dest}"
            found.append((name, choice.help or ""))
            found += command_list(action.choices[choice.dest], name + " ")
    return found


def _offline(settings: Settings, args: argparse.Namespace) -> int | None:
    """The integrity commands that need no database (None: not one of them)."""
    if args.command not in {"ledger-keygen", "verify-bundle", "checkpoint"}:
        return None
    from app.cli import integrity

    if args.command == "ledger-keygen":
        return integrity.run_ledger_keygen()
    if args.command == "verify-bundle":
        return integrity.run_verify_bundle(settings, args)
    if args.command == "checkpoint" and args.checkpoint_command == "vkeys":
        return integrity.run_checkpoint_vkeys(settings)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    offline = _offline(settings, args)
    if offline is not None:
        return offline
    # Commands that need no database.
    if args.command == "dev":
        from app.cli.dev import run_dev_command

        return run_dev_command(settings, args)
    if args.command == "witness":
        from app.cli.witness import witness_command

        return witness_command(settings, args)
    if args.command == "serve":
        from app.cli.serve import serve

        serve(settings)
        return 0
    if not settings.database_url:
        raise SystemExit("AUDIT_DATABASE_URL must be set")
    return _database_command(settings, args)


def _database_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "migrate":
        from app.cli.migrate import migrate

        migrate(settings)
    elif args.command == "worker":
        from app.cli.serve import worker_command

        return worker_command(settings)
    elif args.command == "syslog":
        from app.cli.syslog import syslog_command

        return syslog_command(settings)
    elif args.command == "partitions":
        from app.cli.partitions import _partitions

        return _partitions(settings, args)
    elif args.command in {"verify", "checkpoint", "export-bundle"}:
        from app.cli.integrity import _integrity

        return _integrity(settings, args)
    else:
        from app.cli.keys import _keys

        return _keys(settings, args)
    return 0
