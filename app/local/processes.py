"""`python -m app <command>` (serve, worker, witness, ...) as a process of its own: started, made
ready, signalled, stopped, and started again, by the benchmark, the fault harness, the tests that
need real processes and `make run`'s witness.

Each runs in a session of its own, so a signal goes to its process group: the process and any
API workers it forks. Its output is appended to a log file, or shared with this process's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import app

# The checkout (or installation) this `app` is imported from: first on a child's PYTHONPATH,
# so that the child runs the same code.
SOURCE_ROOT = Path(app.__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
KILL_WAIT_S = 10.0


class AppProcessError(RuntimeError):
    """A process exited before it was ready, or was not ready in time; with its log's tail."""


def clean_environment(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its AUDIT_* settings, with `settings` instead and
    this `app` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    return env | dict(settings or {})


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class AppProcess:
    """One `python -m app <command>` process; start() again after it ended runs a fresh one."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        log: Path | None = None,
        cwd: Path | None = None,
        name: str = "",
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log
        self.cwd = cwd
        self.name = name or command[0]
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "app", *self.command]

    @property
    def pid(self) -> int:
        if self.process is None:
            raise AppProcessError(f"{self.name} was never started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def start(self) -> None:
        self._close_log()
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )

    def send(self, sig: signal.Signals) -> None:
        """`sig` to the process group, while the process runs (a reaped process's group id may
        be another's by now)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def wait(self, within_s: float) -> bool:
        """Whether the process ended within `within_s` seconds."""
        if self.process is None:
            return True
        try:
            self.process.wait(within_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    async def ended(self, within_s: float) -> bool:
        """wait() for asyncio code: whether the process ended within `within_s` seconds."""
        deadline = time.monotonic() + within_s
        while self.running:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.wait(KILL_WAIT_S)
        self._close_log()

    async def killed(self) -> None:
        """kill() for asyncio code; the signal is sent before it first yields."""
        self.send(signal.SIGKILL)
        await self.ended(KILL_WAIT_S)
        self._close_log()

    def terminate(self) -> None:
        """SIGTERM, once: a second one may cut a graceful shutdown short (uvicorn's). A frozen
        (SIGSTOP) process is woken right after it, so it sees it."""
        self.send(signal.SIGTERM)
        self.send(signal.SIGCONT)

    def reap(self, within_s: float) -> None:
        """Wait up to `within_s` for the process to end, SIGKILL it after that."""
        if not self.wait(within_s):
            self.kill()
        self._close_log()

    def stop(self, grace_s: float) -> float:
        """SIGTERM, then SIGKILL after `grace_s`; how long it took to exit."""
        started = time.monotonic()
        self.terminate()
        self.reap(grace_s)
        return time.monotonic() - started

    async def stopped(self, grace_s: float) -> float:
        """stop() for asyncio code."""
        started = time.monotonic()
        self.terminate()
        if not await self.ended(grace_s):
            await self.killed()
        self._close_log()
        return time.monotonic() - started

    def tail(self, chars: int = 3000) -> str:
        if self.log_path is None:
            return "(its output went to this process's)"
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def check_running(self, what: str = "") -> None:
        """An AppProcessError with the log's tail when the process has exited."""
        if self.process is not None and not self.running:
            said = f" {what}" if what else ""
            raise AppProcessError(
                f"{self.name} exited with {self.returncode}{said}; its log:\n{self.tail()}"
            )

    def wait_ready(self, urls: Sequence[str], within_s: float = READY_TIMEOUT_S) -> None:
        """Until every URL answers 200; an AppProcessError when the process exits or
        `within_s` passes first."""
        deadline = time.monotonic() + within_s
        waiting = list(urls)
        while waiting := [url for url in waiting if not answers(url)]:
            self.check_running("before it was ready")
            if time.monotonic() > deadline:
                raise AppProcessError(f"{self.name} not ready in {within_s:.0f} s: {waiting}")
            time.sleep(0.1)

    async def ready(self, urls: Sequence[str], within_s: float = READY_TIMEOUT_S) -> None:
        """wait_ready() for asyncio code."""
        deadline = time.monotonic() + within_s
        waiting = list(urls)
        while waiting:
            found = await asyncio.gather(*(asyncio.to_thread(answers, url) for url in waiting))
            waiting = [url for url, ok in zip(waiting, found, strict=True) if not ok]
            if not waiting:
                return
            self.check_running("before it was ready")
            if time.monotonic() > deadline:
                raise AppProcessError(f"{self.name} not ready in {within_s:.0f} s: {waiting}")
            await asyncio.sleep(0.1)

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()
