"""Scratch databases beside the given one (created, migrated with `python -m app migrate`,
dropped after) and the `python -m app` subprocesses that work on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping

import asyncpg


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (same server, user and options)."""
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def app_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The environment for `python -m app`: ours, without the caller's AUDIT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(settings)
    return env


TIMED_OUT = -1


async def command_status(
    command: list[str],
    within_s: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a command to the end (killed after `within_s`): exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within_s)
    except TimeoutError:
        return TIMED_OUT, "", f"{' '.join(command)}: killed after {within_s:.0f} s"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode(errors="replace")


async def app_status(
    args: list[str], settings: Mapping[str, str], within_s: float = 300
) -> tuple[int, str, str]:
    """Run `python -m app <args>` to the end: exit code, stdout, stderr. The working directory
    is empty, so no `.env` of a checkout leaks in."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as cwd:
        command = [sys.executable, "-m", "app", *args]
        return await command_status(command, within_s, cwd, app_env(settings))


async def run_app(args: list[str], settings: Mapping[str, str], within_s: float = 300) -> str:
    """`python -m app <args>`'s stdout; raises with its stderr when it fails."""
    code, out, err = await app_status(args, settings, within_s)
    if code != 0:
        raise RuntimeError(f"python -m app {' '.join(args)} exited {code}: {err[-2000:]}")
    return out


async def admin_execute(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_databases(server_url: str, *labels: str) -> AsyncIterator[list[str]]:
    """New databases, migrated to head at once; their URLs. Dropped on the way out, whatever
    happened."""
    names = [f"audit_bench_{label}_{uuid.uuid4().hex[:8]}" for label in labels]
    created: list[str] = []
    try:
        for name in names:
            await admin_execute(server_url, f'CREATE DATABASE "{name}"')
            created.append(name)
        urls = [with_database(server_url, name) for name in names]
        async with asyncio.TaskGroup() as group:
            for url in urls:
                group.create_task(run_app(["migrate"], {"AUDIT_DATABASE_URL": url}))
        yield urls
    finally:
        for name in created:
            await admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
