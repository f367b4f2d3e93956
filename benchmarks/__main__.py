"""``python -m benchmarks [--tiny] [--only SECTION ...] [--out metrics/bench.json]``.

Runs the sections in order, each timed and watched for load from other processes, then
writes the JSON atomically and prints a table. A section that fails is recorded with
its error and the others still run; the exit status is 1 then. Missed targets are
reported, not failed: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from benchmarks import compute, data, repro, roofline
from benchmarks.config import FULL, TINY
from benchmarks.measure import CONTAMINATION_CORES, Load
from benchmarks.report import table
from retinaseg.core.atomic import write_json

SECTIONS = {"peak": compute.peak, "train_step": compute.train_step, "input_stall": compute.input_stall,
            "determinism": compute.determinism, "distribute": compute.distributed, "augmentation": data.augmentation,
            "prepare": data.prepare, "inference": compute.inference, "roofline": roofline.roofline,
            "dvc_noop": repro.dvc_noop}
#: train_step and roofline report throughput as a fraction of the peak measured in the same run.
NEEDS = {"train_step": {"peak"}, "roofline": {"peak"}}


@dataclass
class Run:
    """What sections share: a scratch folder and the results so far."""

    tmp: Path
    results: dict


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Measure the pipeline's speed; write metrics/bench.json.")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and one repetition: checks the code, not the speed")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections (and what they need): {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cfg = TINY if args.tiny else FULL
    chosen = set(args.only or SECTIONS)
    chosen |= set().union(*(NEEDS.get(name, set()) for name in chosen))
    started = time.perf_counter()
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tiny": cfg.tiny, "hardware": compute.hardware_info(), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        run = Run(Path(tmp), report["sections"])
        for name, section in SECTIONS.items():
            if name in chosen:
                print(f"[{name}] running", flush=True)
                with Load() as load:
                    try:
                        result = section(cfg, run)
                    except Exception as error:  # noqa: BLE001 - record it and measure the rest
                        traceback.print_exc()
                        result = {"error": f"{type(error).__name__}: {error}"}
                result["load"] = load.record()
                run.results[name] = result
                print(f"[{name}] {'failed' if 'error' in result else 'done'} in {load.seconds:.1f} s"
                      f" (other processes: {result['load']['other_load_cores']} cores)", flush=True)
    sections = report["sections"].values()
    report["targets"] = [goal for result in sections for goal in [result.get("target"), *result.get("targets", [])]
                         if goal]
    report["contaminated"] = any((result["load"]["other_load_cores"] or 0) > CONTAMINATION_CORES
                                 for result in sections)
    report["wall_seconds"] = time.perf_counter() - started
    write_json(args.out, report)
    print(table(report))
    print(f"wrote {args.out} in {report['wall_seconds']:.0f} s")
    return 1 if any("error" in result for result in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
