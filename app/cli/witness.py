"""`python -m app witness`: the transparency log witness (app.witness) on AUDIT_WITNESS_HOST:PORT
until SIGTERM or Ctrl-C; `python -m app witness vkey` prints its verifier key."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from app.cli.lifecycle import Stop, run_until_signalled
from app.core.config import Settings

if TYPE_CHECKING:
    from app.witness.config import WitnessConfig

log = logging.getLogger(__name__)


def witness_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.witness.config import WitnessConfigError, witness_config
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
    return run_until_signalled("witness", functools.partial(witness_parts, config, settings))


# What uvicorn.run answers when the app's lifespan cannot start (the state directory held by
# another witness, a state file unreadable).
STARTUP_FAILURE = 3


@contextlib.asynccontextmanager
async def witness_parts(
    config: WitnessConfig, settings: Settings, stop: Stop
) -> AsyncIterator[None]:
    """The witness's HTTP server (uvicorn, in this event loop). It shuts down after the requests
    in flight; it catches SIGTERM and SIGINT itself while it runs and passes them on when done."""
    import uvicorn

    from app.witness.server import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, metrics_token=settings.metrics_token),
            host=settings.witness_host,
            port=settings.witness_port,
            access_log=False,
            server_header=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    serving = asyncio.create_task(server.serve(), name="witness-server")
    serving.add_done_callback(lambda _: stop.now(0 if server.started else STARTUP_FAILURE))
    try:
        yield
    finally:
        server.should_exit = True
        await serving
