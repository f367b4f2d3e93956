"""``docs/results.md``: the committed run's figures, rendered from the committed metrics (``make docs``).

The README and the pages under ``docs/`` cite the current run's scores and times through this one
page instead of copying them, so no figure there goes stale: ``tests/test_docs.py`` renders the
page again from the metrics and fails when the committed page differs. It reads only files that
git holds (no DVC output, no MLflow store):

- ``metrics/eval/<model>/summary.json`` and ``metrics/train/<model>/train.json``: the figures that
  decide an experiment, as ``dvc metrics show`` lists them (``retinaseg.tracking.summary``);
- ``metrics/comparison.md``: the compare stage's table of every model and class, of which the
  columns in ``TEST_COLUMNS`` are quoted as they are written there;
- ``metrics/bench.json``: the speed figures of ``make bench``, each section rendered only when the
  file holds it.

``python -m retinaseg.compare.docs [--root DIR] [--out FILE] [--check]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retinaseg.core import stage
from retinaseg.core.atomic import write_text
from retinaseg.core.errors import PipelineError, one_line

#: The page, relative to the project's root.
RESULTS = Path("docs/results.md")
#: The columns of metrics/comparison.md quoted on the page, in this order, with their headers as written there.
TEST_COLUMNS = ("variant", "init", "class", "threshold", "core CPM [95 % CI]",
                "core CPM, FP outside marks [95 % CI]", "truth CPM [95 % CI]", "core Dice [95 % CI]",
                "core lesions found", "FP components / image", "truth lesions found", "truth FP / image",
                "predicted % of FOV", "core % of FOV")
#: train_step's variants: how the page names them.
VARIANTS = {"float32": "float32", "bfloat16": "bfloat16 (`train.mixed_precision`)",
            "float32_xla": "float32 with XLA (`train.jit_compile`)", "bfloat16_xla": "bfloat16 with XLA"}
HEADER = """# Results of the committed run

<!-- Written by `make docs` (python -m retinaseg.compare.docs) from the committed metrics: do not edit by hand.
tests/test_docs.py fails when this page differs from what they render. -->

The figures of the pipeline run whose metrics are committed (`params.yaml` as committed; `dvc repro`
or `make run` writes them), and of the last `make bench`. Every other page cites the current
run's scores and times here; the measurements quoted elsewhere as text were taken once, and
say how. `make docs` renders this page again after a run.
"""


def read_json(path: Path) -> Any:
    """A committed metrics file; a missing or unparsable one is a one-line error that names it."""
    fix = "`make bench` writes it" if path.name == "bench.json" else "`dvc repro` writes it"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; {fix}") from None
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror or one_line(error)}); {fix}") from None
    except ValueError as error:
        raise PipelineError(f"{path}: not valid JSON ({one_line(error)}); {fix}") from None


def cell(value: float | None, digits: int = 3) -> str:
    """A figure with ``digits`` decimals, or ``n/a`` for an undefined one (null in the file)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def percent(share: float) -> str:
    return f"{100 * share:.0f} %"


def table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def models(metrics: Path) -> list[str]:
    """The evaluated models (``metrics/eval/<model>/summary.json``), by name."""
    return sorted(path.parent.name for path in (metrics / "eval").glob("*/summary.json"))


def first_value(path: Path) -> dict[str, Any]:
    """The figures of a summary.json or train.json, under their one key (the model's short name)."""
    written = read_json(path)
    if not isinstance(written, dict) or len(written) != 1:
        raise PipelineError(f"{path}: expected one model's figures under one key; `dvc repro` writes it")
    return next(iter(written.values()))


def deciding_figures(metrics: Path) -> list[str]:
    """Per class and per model, the figures ``dvc metrics show`` lists, with the seconds of training."""
    by_class, by_model, seconds = [], [], 0.0
    for model in models(metrics):
        evaluation = first_value(metrics / "eval" / model / "summary.json")
        training = first_value(metrics / "train" / model / "train.json")
        scalars = ("found", "fp", "area")
        by_class += [[model, name, cell(scores["cpm"]), cell(scores["dice"])]
                     for name, scores in evaluation.items() if name not in scalars]
        best = next((value for key, value in training.items() if key.startswith("best_")), None)
        by_model.append([model, cell(evaluation["found"]), cell(evaluation["fp"], 2), cell(evaluation["area"], 2),
                         cell(best), f"{training['train_s']:.0f}"])
        seconds += training["train_s"]
    return ["## Deciding figures", "",
            ("What `dvc metrics show` and `dvc exp show` list (`metrics/eval/<model>/summary.json`, "
            "`metrics/train/<model>/train.json`; the columns are explained in "
            "[experiments.md](experiments.md#reading-experiments)). Per lesion class, on the test images:"), "",
            *table(("model", "class", "core CPM", "core Dice"), by_class), "",
            "Per model, at the chosen operating point, its classes pooled, and its training:", "",
            *table(("model", "core lesions found", "FP components / image (core, classes summed)",
                    "predicted / core area", "best epoch's Dice", "training s"), by_model), "",
            f"Training took {seconds:,.0f} s in all ({seconds / 60:.1f} min).", ""]


def comparison_table(metrics: Path) -> tuple[str, list[dict[str, str]]]:
    """The data line and the rows of metrics/comparison.md's table, each a dict by header."""
    path = metrics / "comparison.md"
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise PipelineError(f"{path}: unreadable ({error.strerror or one_line(error)}); "
                            "`dvc repro compare` writes it") from None
    start = next((i for i, line in enumerate(lines) if line.startswith("| variant |")), None)
    if start is None:
        raise PipelineError(f"{path}: no table starting with '| variant |'; `dvc repro compare` writes it")
    header = [name.strip() for name in lines[start].strip("|").split("|")]
    missing = [name for name in TEST_COLUMNS if name not in header]
    if missing:
        raise PipelineError(f"{path}: no column {missing[0]!r}; update TEST_COLUMNS in {__name__} or "
                            "rerun `dvc repro compare`")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (value.strip() for value in line.strip().strip("|").split("|")))))
    data = next((line for line in lines if line.startswith("Data:")), "")
    return data, rows


def scores_section(metrics: Path) -> list[str]:
    """Every evaluated model and class against the core and the drawn lesions, as metrics/comparison.md ranks them."""
    data, rows = comparison_table(metrics)
    evaluated = set(models(metrics))
    quoted = [[row[name] for name in TEST_COLUMNS] for row in rows if row["variant"] in evaluated]
    return ["## Test scores", "",
            ("Every model and lesion class, ranked by core CPM, with 95 % bootstrap intervals over the test "
            f"images: columns of `metrics/comparison.md` (which has them all, and the rules). {data}"), "",
            *table(TEST_COLUMNS, quoted), "",
            "What each column counts: [detection.md](detection.md#evaluation).", ""]


def median(figure: dict[str, Any]) -> float:
    """The median of a repeated measurement (``{"median": ..., "min": ..., ...}``)."""
    return figure["median"]


def peak_rows(section: dict[str, Any]) -> list[list[str]]:
    precisions = [name for name in ("float32", "bfloat16") if name in section]
    values = " / ".join(f"{median(section[name]['gflops']):.0f}" for name in precisions)
    return [[f"{' / '.join(precisions)} matmul peak", f"{values} GFLOP/s"]]


def train_step_rows(section: dict[str, Any]) -> list[list[str]]:
    """Each net and variant: images/s, against the peak and against float32 (or the same without XLA)."""
    rows = []
    for net in section["nets"].values():
        name = f"train step, depth {net['depth']}, {net['base_filters']} filters"
        for variant, figures in net["variants"].items():
            measured = f"{median(figures['images_per_second']):.2f} images/s"
            if variant == "float32":
                measured += (f", {median(figures['gflops']):.0f} GFLOP/s = "
                             f"{percent(figures['fraction_of_float32_peak'])} of the float32 peak")
            elif variant.endswith("_xla"):
                measured += f", x{figures['speedup_vs_no_xla']:.2f} vs {variant.removesuffix('_xla')} without XLA"
            elif "speedup_vs_float32" in figures:
                measured += f", x{figures['speedup_vs_float32']:.2f} vs float32"
            rows.append([f"{name}, {VARIANTS.get(variant, variant)}", measured])
        if "op_breakdown" in net:
            ops = net["op_breakdown"]
            backward = sum(op["share"] for op in ops["top_ops"] if "Backprop" in op["op"])
            rows.append([f"kernel time of one profiled step, depth {net['depth']}/{net['base_filters']}",
                         f"convolutions {percent(ops['conv_share'])}, the backward ones {percent(backward)}"])
    return rows


def speed_rows(sections: dict[str, Any]) -> list[list[str]]:
    """The remaining sections of bench.json, each only when present."""
    rows = []
    if "input_stall" in sections:
        rows.append(["input stall, step through tf.data / on a batch in memory",
                     f"{sections['input_stall']['ratio']:.2f}"])
    if "augmentation" in sections:
        section = sections["augmentation"]
        rows.append(["augmentation, ImageDataGenerator-style vs `retinaseg.augment.warps`",
                     (f"{median(section['keras_style']['images_per_second']):.0f} vs "
                     f"{median(section['ours']['images_per_second']):.0f} images/s, x{section['speedup']:.1f}")])
    if "prepare" in sections:
        section = sections["prepare"]
        rows.append([f"prepare, {section['images']} images of {section['size'][0]}x{section['size'][1]}",
                     (f"{median(section['seconds']):.1f} s, peak RSS {section['peak_rss_mib']['bound']:.0f} MiB "
                     f"(main process + {section['workers']} workers, an upper bound)")])
    if "inference" in sections:
        section = sections["inference"]
        sizes = [section[key] for key in ("training_size", "full_resolution") if key in section]
        names = " / at ".join("x".join(map(str, size["size"])) for size in sizes)
        speeds = " / ".join(f"{median(size['images_per_second']):.1f}" for size in sizes)
        rows.append([f"inference at {names}", f"{speeds} images/s; {section['model']}"])
    if "dvc_noop" in sections:
        section = sections["dvc_noop"]
        rows.append(["no-op `dvc repro`", f"skipped: {section['skipped']}" if "skipped" in section
                     else f"{median(section['repro_seconds']):.2f} s"])
    return rows + device_rows(sections) + roofline_rows(sections)


def roofline_rows(sections: dict[str, Any]) -> list[list[str]]:
    """params.yaml's model against this machine's roofline, when bench.json holds it."""
    if not sections.get("roofline"):
        return []
    section = sections["roofline"]
    step, epoch = section["train_step"], section["pipeline_epoch"]
    bound, peak = step["roofline"], section["peak"]
    return [
        [f"training step of params.yaml's model ({section['model']})",
         f"{median(step['images_per_second']):.1f} images/s, {median(step['gflops']):.0f} GFLOP/s"],
        ["its roofline bound", (f"{bound['bound_images_per_second']:.1f} images/s: {bound['binds']} binds "
                                f"({peak['precision']} peak {peak['gflops']:.0f} GFLOP/s, triad "
                                f"{median(section['bandwidth']['gbs']):.0f} GB/s, {bound['arithmetic_intensity']:.0f} "
                                f"FLOP/B against a ridge of {bound['ridge_point']:.0f}); the step reaches "
                                f"{100 * bound['fraction_of_bound']:.0f} %")],
        ["an epoch as the pipeline trains it (`train_task`)",
         f"{median(epoch['images_per_second']):.1f} images/s, {100 * epoch['fraction_of_bare_step']:.0f} % of the bare step"],
    ]


def device_rows(sections: dict[str, Any]) -> list[list[str]]:
    """Op determinism and training over several devices, when bench.json holds them."""
    rows = []
    if "determinism" in sections:
        section = sections["determinism"]
        rows.append(["TensorFlow op determinism, extra step time", (f"{100 * section['cost']:+.0f} % "
                     f"({section['model']}, batch {section['batch']})")])
    if "distribute" in sections:
        section = sections["distribute"]
        counts = {count: entry for count, entry in section["devices"].items() if "images_per_second" in entry}
        speed = " / ".join(f"{median(entry['images_per_second']):.1f}" for entry in counts.values())
        ratio = f", x{section['speedup_2_vs_1']:.2f}" if "speedup_2_vs_1" in section else ""
        rows.append([f"training under `train.distribute: mirrored`, {' / '.join(counts)} {section['device']} devices",
                     f"{speed} images/s{ratio} ({section['model']}, global batch {section['global_batch']})"])
    return rows


def machine(bench: dict[str, Any]) -> str:
    """The machine and the conditions of a bench.json, in one sentence."""
    hardware = bench["hardware"]
    flags = ", ".join(name for name, present in hardware.get("flags", {}).items() if present)
    load = ("other processes used the cores during some section (`contaminated`)" if bench.get("contaminated")
            else "no other load")
    tiny = "; `--tiny`: shrunk sizes, not figures to quote" if bench.get("tiny") else ""
    return (f"Measured {bench['created'][:10]} on {hardware['cpu']}, {hardware['cores']} cores ({flags}), "
            f"{'a GPU' if hardware.get('gpus') else 'no GPU'}, TensorFlow {hardware['tensorflow']}, Keras "
            f"{hardware['keras']}; {load}{tiny}; {bench['wall_seconds'] / 60:.1f} min in all.")


def speed(metrics: Path) -> list[str]:
    """The speed figures of ``make bench`` and its targets."""
    bench = read_json(metrics / "bench.json")
    sections = bench["sections"]
    rows = ((peak_rows(sections["peak"]) if "peak" in sections else [])
            + (train_step_rows(sections["train_step"]) if "train_step" in sections else []) + speed_rows(sections))
    targets = [[target["name"], f"{target['value']:.3g}", target["limit"], "yes" if target["pass"] else "**no**"]
               for target in bench.get("targets", [])]
    others = sorted(set(sections) - {"peak", "train_step", "input_stall", "augmentation", "prepare", "inference",
                                     "dvc_noop", "determinism", "distribute", "roofline"})
    return ["## Speed", "",
            (f"`metrics/bench.json`, written by `make bench` (every figure the median of several repetitions after "
            f"warm-up; what each section measures: [performance.md](performance.md#benchmarks)). {machine(bench)}"),
            "", *table(("figure", "measured"), rows), "",
            *(table(("target", "measured", "limit", "met"), targets) + [""] if targets else []),
            *([f"Also in bench.json, not rendered here: {', '.join(others)}.", ""] if others else [])]


def render(root: Path) -> str:
    """The page, from the metrics under ``root`` (the project's folder)."""
    metrics = root / "metrics"
    if not models(metrics):
        raise PipelineError(f"{metrics / 'eval'}: no <model>/summary.json; `dvc repro` writes them")
    return "\n".join([HEADER, *deciding_figures(metrics), *scores_section(metrics), *speed(metrics)]).rstrip() + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m retinaseg.compare.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project's folder (default: here)")
    parser.add_argument("--out", type=Path, help=f"the page to write (default: ROOT/{RESULTS})")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if the page differs")
    args = parser.parse_args(argv)
    out = args.out or args.root / RESULTS
    text = render(args.root)
    if args.check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            raise PipelineError(f"{out} is out of date with the metrics; run `make docs`")
        print(f"{out} is up to date")
        return
    write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    stage.run(main)
