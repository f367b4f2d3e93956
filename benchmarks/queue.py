"""Parallel experiments from DVC's queue, over and over: ``python -m benchmarks.queue [--rounds 10] [--no-first-step]``.

Each round builds a fresh tiny copy of the project (as the tests do), reproduces the stages that
every experiment shares (``dvc repro augment``, the README's first step), queues four
experiments with different ``train.lr`` and runs them two at a time (``dvc queue start -j 2``),
then counts the experiments that did not succeed and prints each one's error line. With
``--no-first-step`` the workers reproduce the shared stages themselves, two at a time with the
same inputs, and race on the same entry of DVC's run cache (treeverse/dvc#10673): the count
shows how often that loses an experiment. About 1.5 min a round on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATES = {"lr-1": "0.001", "lr-2": "0.002", "lr-3": "0.003", "lr-4": "0.004"}
TARGET = "evaluate@binary"
#: The stages every queued experiment shares, reproduced once before queueing.
SHARED = "augment"
WAIT = 900  # seconds for the whole queue; measured 65-110 s on 2 shared cores


def dvc(args: list[str], repo: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``repo`` with the project's environment and the project's own MLflow store."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, text=True, stdin=subprocess.DEVNULL,
                            **({"capture_output": True} | kwargs))
    if check and result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {(result.stdout or '')[-1500:]}{(result.stderr or '')[-1500:]}")
    return result


def queue_experiments(repo: Path) -> None:
    for name, lr in LEARNING_RATES.items():
        dvc(["exp", "run", "--queue", "-S", f"train.lr={lr}", "--name", name, TARGET], repo)


def start_queue(repo: Path, log: Path) -> None:
    """`dvc queue start -j 2`, its output to a file: the workers it spawns inherit it and outlive the command."""
    with log.open("w") as out:
        dvc(["queue", "start", "-j", "2"], repo, stdout=out, stderr=subprocess.STDOUT, capture_output=False,
            timeout=120)


def queue_status(repo: Path) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed) from `dvc queue status`."""
    statuses = {}
    for line in dvc(["queue", "status"], repo).stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in LEARNING_RATES:
            statuses[words[1]] = words[-1]
    return statuses


def wait_for_queue(repo: Path) -> tuple[dict[str, str], float]:
    """Poll `dvc queue status` until every experiment has ended; returns the statuses and the seconds taken."""
    started = time.monotonic()
    statuses: dict[str, str] = {}
    while time.monotonic() - started < WAIT:
        time.sleep(10)
        statuses = queue_status(repo)
        if len(statuses) == len(LEARNING_RATES) and all(s in ("Success", "Failed") for s in statuses.values()):
            break
    return statuses, time.monotonic() - started


def error_lines(log: str) -> list[str]:
    """The lines of a stage log that name an error (the last few), without TensorFlow's start-up notes."""
    lines = [line.strip() for line in log.splitlines()
             if ("Error" in line or "Exception" in line or "error:" in line) and "oneDNN" not in line]
    return lines[-4:] or log.strip().splitlines()[-4:]


def one_round(folder: Path, first_step: bool) -> dict:
    """A fresh tiny project, its queue run two at a time; the experiments that failed, with their errors."""
    sys.path.insert(0, str(ROOT / "tests"))
    from project import tiny_project

    repo = tiny_project(folder / "project")
    if first_step:
        dvc(["repro", SHARED], repo)
    queue_experiments(repo)
    start_queue(repo, folder / "queue-start.log")
    try:
        statuses, seconds = wait_for_queue(repo)
    finally:
        dvc(["queue", "stop"], repo, check=False)  # the idle workers would linger for a minute
    failed = {name: error_lines(dvc(["queue", "logs", name], repo, check=False).stdout)
              for name in LEARNING_RATES if statuses.get(name) != "Success"}
    return {"seconds": round(seconds, 1), "failed": failed}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-first-step", action="store_true",
                        help=f"queue without reproducing the shared stages (up to {SHARED}) first")
    parser.add_argument("--json", type=Path, help="also write the rounds' results here")
    args = parser.parse_args(argv)
    rounds = []
    for index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="queue-", ignore_cleanup_errors=True) as tmp:  # workers may linger
            result = one_round(Path(tmp), first_step=not args.no_first_step)
        rounds.append(result)
        print(f"round {index + 1}/{args.rounds}: {len(LEARNING_RATES) - len(result['failed'])}/{len(LEARNING_RATES)} "
              f"succeeded in {result['seconds']:.0f} s" + "".join(
                  f"\n  {name} failed: {' | '.join(lines)}" for name, lines in result["failed"].items()), flush=True)
    lost = sum(len(result["failed"]) for result in rounds)
    print(f"{'without' if args.no_first_step else 'with'} the first step: {lost} of "
          f"{len(rounds) * len(LEARNING_RATES)} experiments failed in {len(rounds)} rounds")
    if args.json:
        args.json.write_text(json.dumps({"first_step": not args.no_first_step, "rounds": rounds,
                                         "failed": lost}, indent=2) + "\n")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
