"""Repetitions, their summary, and the CPU load of other processes while they ran."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: Average cores used by other processes above which a section's figures count as contaminated.
CONTAMINATION_CORES = 0.25
#: /proc/stat counts in 10 ms ticks: shorter blocks give no meaningful load.
MIN_LOAD_SECONDS = 1.0


def stats(values: Sequence[float]) -> dict:
    """Median, spread and every repetition, so a reader can judge the noise."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "reps": len(values), "values": [round(value, 6) for value in values]}


def repeat(call: Callable[[], object], warmup: int, reps: int) -> list[float]:
    """Wall seconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def rate(count: float, seconds: Sequence[float]) -> dict:
    """Summary of ``count / s`` over the repetitions (e.g. images per second)."""
    return stats([count / s for s in seconds])


def _busy_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (steal counts: another guest had the core)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class Load:
    """Cores used by *other* processes during a ``with`` block: the contamination of its figures.

    System busy time minus this process's and its finished children's CPU time, per wall
    second. None where /proc/stat is unavailable or the block was too short to tell.
    """

    def __enter__(self) -> Load:
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        self.seconds = 0.0
        self.other_cores: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        self.seconds = wall - self._start[0]
        if busy is not None and self._start[1] is not None and self.seconds >= MIN_LOAD_SECONDS:
            other = (busy - self._start[1]) - (own - self._start[2])
            self.other_cores = max(0.0, other / self.seconds)

    def record(self) -> dict:
        return {"seconds": round(self.seconds, 2),
                "other_load_cores": None if self.other_cores is None else round(self.other_cores, 2),
                "load_average_1min": round(os.getloadavg()[0], 2)}


def target(name: str, value: float | None, limit: float, at_most: bool) -> dict:
    """A goal next to its figure; ``pass`` is None when the figure could not be measured."""
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {"name": name, "value": value, "limit": f"{'<=' if at_most else '>='} {limit}", "pass": passed}
