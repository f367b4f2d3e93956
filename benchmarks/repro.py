"""The cost of ``dvc repro`` when there is nothing to do: the overhead of every pipeline run.

Nothing to do means only the always-run ``source`` stage runs, finding data.source unchanged.

``dvc repro`` runs only while ``dvc status`` reports everything up to date, checked
before every repetition: a stale stage would otherwise start real (long) work and
rewrite outputs someone may be using.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.config import Config
from benchmarks.measure import stats, target

ROOT = Path(__file__).resolve().parents[1]
#: The stage that runs on every repro (it fingerprints data.source and changes nothing else).
ALWAYS_RUN = "source"


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, capture_output=True, text=True)


def _stale() -> str:
    """Why the pipeline is not up to date, or '' when it is."""
    status = _dvc("status", "--json")
    if status.returncode:
        return f"`dvc status` failed: {' '.join(status.stderr.split())[-300:]}"
    changed = {stage for stage, why in json.loads(status.stdout or "{}").items() if why != ["always changed"]}
    return f"`dvc status` reports changes in {', '.join(sorted(changed))}" if changed else ""


def dvc_noop(cfg: Config, run) -> dict:
    if not cfg.dvc:
        return {"skipped": "--tiny"}
    seconds = []
    for _ in range(cfg.slow_reps):
        reason = _stale()
        if reason:
            return {"skipped": f"pipeline not up to date: {reason}"}
        started = time.perf_counter()
        done = _dvc("repro")
        seconds.append(time.perf_counter() - started)
        ran = [line for line in done.stdout.splitlines() if line.startswith("Running stage")]
        if done.returncode or ran != [f"Running stage '{ALWAYS_RUN}':"]:
            raise RuntimeError(f"`dvc repro` was not a no-op: {' '.join((done.stdout + done.stderr).split())[-300:]}")
    return {"repro_seconds": stats(seconds),
            "target": target("dvc repro no-op seconds", stats(seconds)["median"], 3, at_most=True)}
