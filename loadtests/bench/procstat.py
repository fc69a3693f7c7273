"""CPU time, resident memory and open sockets of processes, read from /proc (Linux; None
elsewhere)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float
    rss_bytes: int


def sample(pid: int) -> ProcSample | None:
    """User plus system CPU seconds and VmRSS of `pid`; None when it is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return ProcSample((utime + stime) / CLOCK_TICKS, rss)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    found = {pid: sample(pid) for pid in pids}
    return {pid: s.cpu_s for pid, s in found.items() if s is not None}


def open_sockets(pid: int) -> int | None:
    """How many of `pid`'s file descriptors are sockets (TCP, UDP, Unix); None when it is gone
    or unreadable."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        count += target.startswith("socket:[")
    return count
