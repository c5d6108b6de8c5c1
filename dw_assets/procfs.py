"""Reading Linux ``/proc``: a process's parent and CPU time, for the benches that measure process trees.

``/proc/<pid>/stat`` is ``pid (comm) state ppid ...``; the command name may hold spaces and
parentheses, so the fields are split after its last ``)``. Off Linux, or for a process that has
exited, the readers return None.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (index 0 is the state), or None."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int:
    """The parent's pid, -1 when the process is gone (or there is no /proc)."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else -1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (its own threads, not its children)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every core since boot, from ``/proc/stat``'s first line; None off Linux.
    Two readings give the cores kept busy between them: ``cores * Δbusy / Δtotal``."""
    try:
        ticks = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def children() -> dict[int, list[int]]:
    """Every live process's children by parent pid (empty without /proc)."""
    tree: dict[int, list[int]] = {}
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return tree
    for entry in entries:
        if entry.name.isdigit():
            parent = parent_pid(int(entry.name))
            if parent >= 0:
                tree.setdefault(parent, []).append(int(entry.name))
    return tree
