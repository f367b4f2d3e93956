"""The processes that started this one (its parent, and the shell's parent when a shell ran the command), and
whether they are still there: a process whose parent changed has lost it (the system reparents orphans)."""

from __future__ import annotations

import os
from pathlib import Path

#: Shells through which DVC runs a stage's command (``$SHELL -c``): when one is the parent, its parent is watched too.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish"})


def watched() -> list[tuple[int, int]]:
    """(process, parent) pairs whose parent changes when the process that started this one ends: this process and
    its parent, and when that parent is a shell (DVC runs commands through one), the shell and its parent too."""
    pairs = [(os.getpid(), os.getppid())]
    shell = os.getppid()
    grandparent = parent_of(shell)
    if grandparent and name(shell) in SHELLS:
        pairs.append((shell, grandparent))
    return pairs


def parent_of(pid: int) -> int | None:
    """The parent of process ``pid`` (None if it is gone or the system has no ``/proc``)."""
    if pid == os.getpid():
        return os.getppid()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
