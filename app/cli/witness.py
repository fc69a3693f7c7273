"""`python -m app witness`: the transparency log witness (app.witness) on AUDIT_WITNESS_HOST:PORT
until SIGTERM or Ctrl-C; `python -m app witness vkey` prints its verifier key."""

from __future__ import annotations

import argparse
import logging
import sys

from app.core.config import Settings

log = logging.getLogger(__name__)


def witness_command(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.witness.config import WitnessConfigError, witness_config
    from app.witness.server import create_app
    from app.witness.state import StateError

    try:
        config = witness_config(settings)
    except (WitnessConfigError, StateError, OSError) as exc:
        print(f"witness: {exc}", file=sys.stderr)
        return 2
    if args.witness_command == "vkey":
        print(config.identity.vkey)
        return 0
    if not config.logs:
        print("witness: AUDIT_WITNESS_LOGS names no log to witness", file=sys.stderr)
        return 2
    print(f"witness {config.identity.name}: vkey {config.identity.vkey}", flush=True)
    app = create_app(config, metrics_token=settings.metrics_token)
    # uvicorn stops on SIGTERM and SIGINT, after the requests in flight; a lifespan that cannot
    # start (the state directory held by another witness, a state file unreadable) exits 3.
    uvicorn.run(
        app,
        host=settings.witness_host,
        port=settings.witness_port,
        loop="uvloop",
        access_log=False,
        server_header=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0
