"""Every trained variant side by side: a markdown table and a figure, with the tutorial's figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from retinaseg.core.outputs import EvalRecord, RunRecord
from retinaseg.tracking import summary

#: The tutorial's binary (haemorrhage) test result on real DIARETDB1 images 28-89,
#: per-image mean, as published. Comparable only with runs on the real dataset.
PUBLISHED_TUTORIAL = {"precision": 0.160, "recall": 0.149, "iou": 0.091, "f1": 0.130}
SCORES = ("f1", "iou", "precision", "recall")
CORE_LESION_SCORES = ("lesion_sensitivity", "fp_components_per_image", "optic_disc_components_per_image")

#: How the lesion and image-level figures of eval.json are counted; printed under the table.
LESION_RULES = {
    "core": "the lesion core is the reference at prepare.core_threshold (0.75: most annotators agree), "
            "where the lesions are; the training target (prepare.threshold) marks the annotators' coarse regions",
    "post-processing": "per class, pixels whose probability reaches the class's threshold (evaluate.threshold; "
                       "auto = best F-beta, evaluate.threshold_beta, against the core on the validation images), "
                       "inside the field of view; components smaller than evaluate.min_component_px, and with evaluate.drop_on_optic_disc "
                       "those centred on the optic disc, are dropped",
    "lesion": "a reference lesion is an 8-connected component of a class's reference plane; it is found "
              "when at least one of its pixels is predicted",
    "false_positive_component": "an 8-connected predicted component that touches no reference pixel of the class",
    "optic_disc_component": "a predicted component touching the optic disc, located in each image as its "
                            "brightest large region",
    "froc": "the class's probability is thresholded at every value of a grid and cleaned as above; the sensitivity "
            "at a rate is the highest lesion sensitivity of any threshold with at most that many false-positive "
            "components per image; the CPM is its mean over 1/8, 1/4, 1/2, 1, 2, 4 and 8",
    "outside marks": "the core's FROC where a component finds at most the one core lesion it overlaps most (a "
                     "region painted over many lesions finds one) and is a false positive only when it touches no "
                     "pixel that any annotator marked (the ignore regions of detection benchmarks: a lesion fewer "
                     "annotators marked is no false alarm); the lesion-level operating point counts this way",
    "truth": "on synthetic data, the lesions the generator drew (before its simulated annotators marked or missed "
             "them); a kept component finds the one drawn lesion whose ellipse (or centre pixel) it overlaps most",
    "image": "an image is positive for a class when its reference has any lesion pixel, and predicted "
             "positive when the prediction has a component",
    "empty": "scores with a zero denominator (e.g. Dice with empty reference and prediction) are null and "
             "left out of means; n_images_scored says how many images each mean covers",
}


def _cell(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def comparison_rows(eval_dir: Path, train_dir: Path, models_dir: Path, variants: list[str]) -> list[dict[str, Any]]:
    """One row per variant and lesion class: scores against the core and the target, lesion level, cost."""
    rows = []
    for variant in variants:
        evaluation = EvalRecord.read(eval_dir / variant / "eval.json")
        run = RunRecord.read(models_dir / variant / "run.json")
        trained = json.loads((train_dir / variant / "train.json").read_text())[summary.model_key(variant)]
        for name, scores in evaluation.by_class.items():
            core = scores["core"]
            rows.append({"variant": variant, "task": run.task, "init_from": run.init_from or "scratch",
                         "class": name, "threshold": evaluation.thresholds[name],
                         "target_f1": scores["micro"]["f1"],
                         **{f"{s}_per_image": scores["per_image_mean_zero_filled"][s] for s in SCORES},
                         **{f"core_{s}": core["micro"][s] for s in SCORES},
                         **{f"core_{s}": core["lesion"].get(s) for s in CORE_LESION_SCORES},
                         "predicted_fov_share": core["predicted_fov_share"],
                         "reference_fov_share": core["reference_fov_share"], "core_auc_pr": core["pr"]["auc_pr"],
                         **_detection("core", core), **_detection("truth", scores.get("truth")),
                         "train_seconds": trained["train_s"], "epochs": run.epochs,
                         "parameters": run.parameters, "mixed_precision": run.mixed_precision})
    return sorted(rows, key=lambda row: -_rank(row["core_cpm"]))


def _rank(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _detection(reference: str, scores: dict | None) -> dict[str, Any]:
    """CPM with its 95 % interval, sensitivity at 1 FP per image, and the operating point, against one reference."""
    if scores is None:
        return {f"{reference}_{key}": None for key in ("cpm", "cpm_ci95", "sensitivity_at_1_fp", "found", "fp")}
    return {f"{reference}_cpm": scores["froc"]["cpm"], f"{reference}_cpm_ci95": scores["bootstrap"]["cpm_ci95"],
            f"{reference}_sensitivity_at_1_fp": scores["froc"]["sensitivity_at_1_fp"],
            f"{reference}_found": scores["lesion"]["lesion_sensitivity"],
            f"{reference}_fp": scores["lesion"]["fp_components_per_image"],
            **({"core_f1_ci95": scores["bootstrap"]["f1_ci95"],
                "core_outside_marks_cpm": scores.get("froc_outside_marks", {}).get("cpm"),
                "core_outside_marks_cpm_ci95": scores["bootstrap"].get("cpm_outside_marks_ci95")}
               if reference == "core" else {})}


def _with_interval(value: float | None, bounds: list | None) -> str:
    if value is None or bounds is None or None in bounds:
        return _cell(value)
    return f"{_cell(value)} [{_cell(bounds[0])}, {_cell(bounds[1])}]"


def markdown(rows: list[dict[str, Any]], real_data: bool) -> str:
    """The comparison table; the published tutorial row is labelled with the data it was measured on."""
    header = ("| variant | init | class | threshold | core CPM [95 % CI] | core sensitivity at 1 FP / image | "
              "core CPM, FP outside marks [95 % CI] | "
              "truth CPM [95 % CI] | truth lesions found | truth FP / image | "
              "core Dice [95 % CI] | core precision | core recall | "
              "core lesions found | FP components / image | optic-disc components / image | "
              "predicted % of FOV | core % of FOV | core AUC-PR | target Dice | per-image F1 | per-image IoU | "
              "per-image precision | per-image recall | epochs | train s | parameters |")
    columns = header.count("|") - 1
    data = "real DIARETDB1" if real_data else "synthetic DIARETDB1-like data (data.source: synthetic)"
    lines = ["# Test-split comparison", "", f"Data: {data}.", "",
             "Rows are ranked by the core CPM: the mean lesion sensitivity at 1/8 ... 8 false positives per image "
             "(FROC). Intervals are 95 % bootstrap intervals over test images: a difference smaller than them is a "
             "tie. Truth columns score against the lesions the synthetic generator drew (n/a on real data). "
             "Core columns score against the lesion core and count lesions there; target Dice scores against "
             "the training target. Pooled scores count every test pixel once; per-image scores (against the "
             "target) are the mean over test images with undefined values counted as 0, the way the tutorial "
             "reported them. The rules are below the table.", "",
             header, "|" + "---|" * columns]
    for row in rows:
        cells = [row["variant"], row["init_from"], row["class"], _cell(row["threshold"], 3),
                 _with_interval(row["core_cpm"], row["core_cpm_ci95"]), _cell(row["core_sensitivity_at_1_fp"]),
                 _with_interval(row["core_outside_marks_cpm"], row["core_outside_marks_cpm_ci95"]),
                 _with_interval(row["truth_cpm"], row["truth_cpm_ci95"]), _cell(row["truth_found"]),
                 _cell(row["truth_fp"], 2), _with_interval(row["core_f1"], row["core_f1_ci95"]),
                 *(_cell(row[f"core_{s}"]) for s in ("precision", "recall")),
                 *(_cell(row[f"core_{s}"]) for s in CORE_LESION_SCORES),
                 _cell(100 * row["predicted_fov_share"], 2), _cell(100 * row["reference_fov_share"], 2),
                 _cell(row["core_auc_pr"]), _cell(row["target_f1"]),
                 *(_cell(row[f"{s}_per_image"]) for s in SCORES),
                 str(row["epochs"]), f"{row['train_seconds']:.0f}", f"{row['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    published = ["published tutorial (**real** DIARETDB1, images 28-89, threshold 0.1 target)", "scratch",
                 "hemorrhages", *(["n/a"] * 17), *(_cell(PUBLISHED_TUTORIAL[s]) for s in SCORES)]
    lines.append("| " + " | ".join(published + ["n/a"] * (columns - len(published))) + " |")
    if not real_data:
        lines += ["", "The published row was measured on real images; these runs used synthetic data, so the "
                  "two are not comparable and the figure leaves the published row out."]
    lines += ["", "Binary `hemorrhages` and multi-class `red` (hemorrhages + red small dots) are the "
              "closest shared class; `bright` (hard + soft exudates) exists only in the multi-class task. "
              "`multiclass` starts from scratch and `multiclass_transfer` from the binary model, with the "
              "same epochs.", "", "Rules:", "",
              *(f"- **{name.replace('_', ' ')}**: {rule}." for name, rule in LESION_RULES.items())]
    return "\n".join(lines) + "\n"


def froc_rows(metrics_dir: Path, variants: list[str]) -> list[dict[str, Any]]:
    """Every model's FROC curves (``metrics/eval/<variant>/froc/<class>_<reference>.json``) as one table.

    Each row names its curve ("binary hemorrhages core"), so that one chart draws them all.
    """
    rows = []
    for variant in variants:
        for path in sorted((metrics_dir / variant / "froc").glob("*.json")):
            name, _, reference = path.stem.rpartition("_")
            rows += [{"curve": f"{variant} {name} {reference}", **point} for point in json.loads(path.read_text())]
    return rows


def read_curve(path: Path) -> dict[str, list[float]]:
    """Columns of a Keras CSVLogger file (tab-separated) as float lists."""
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle, delimiter="\t"))
    return {key: [float(record[key]) for record in records] for key in (records[0] if records else {})}


#: Bars of the comparison figure: key of a comparison row and its label.
BAR_SCORES = {"core_cpm": "core CPM", "truth_cpm": "truth CPM", "core_f1": "core Dice",
              "core_lesion_sensitivity": "core lesions found"}


def bar_groups(rows: list[dict[str, Any]], real_data: bool) -> tuple[list[str], dict[str, list[float]]]:
    """Group labels and bar heights; the published tutorial joins them only on real data."""
    labels = [f"{row['variant']}\n{row['class']}" for row in rows]
    values = {key: [math.nan if row[key] is None else row[key] for row in rows] for key in BAR_SCORES}
    if real_data:
        labels.append("published tutorial\n(per image, 0.1 target)")
        for key in BAR_SCORES:
            values[key].append(PUBLISHED_TUTORIAL.get(key.removeprefix("core_"), math.nan))
    return labels, values


def figure(rows: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]], froc: list[dict[str, Any]],
           path: Path, real_data: bool) -> None:
    """Scores per variant and class ranked by core CPM, the FROC curves and the validation-Dice curves, as a PNG.

    The published tutorial bars are drawn only for real data: scores on different data must
    not share an axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, values = bar_groups(rows, real_data)
    shown = BAR_SCORES
    fig, (bars, detection, lines) = plt.subplots(1, 3, figsize=(20, 5), gridspec_kw={"width_ratios": [3, 2, 2]})
    width = 0.8 / len(shown)
    for index, (key, label) in enumerate(shown.items()):
        bars.bar(np.arange(len(labels)) + (index - (len(shown) - 1) / 2) * width, values[key], width, label=label)
    bars.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    bars.set_ylim(0, 1)
    bars.set_title(f"Test split, ranked by core CPM ({'real' if real_data else 'synthetic'} data)")
    bars.legend(fontsize=8, ncols=len(shown), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    _froc_panel(detection, froc)
    for variant, curve in curves.items():
        if curve:  # validation Dice where a validation split exists, else training Dice
            key = "val_dice" if "val_dice" in curve else "dice"
            lines.plot(np.array(curve["epoch"]) + 1, curve[key], marker=".", label=f"{variant} ({key})")
    lines.set_xlabel("epoch")
    lines.set_ylabel("Dice against the training target")
    lines.set_ylim(0, 1)
    lines.set_title("Dice per epoch")
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _froc_panel(axes, froc: list[dict[str, Any]]) -> None:
    """Lesion sensitivity against false positives per image (log axis), one line per model, class and reference."""
    names = list(dict.fromkeys(row["curve"] for row in froc))
    for name in names:
        points = sorted((row["fp_per_image"], row["sensitivity"]) for row in froc
                        if row["curve"] == name and row["fp_per_image"] > 0)
        if points:
            style = ":" if name.endswith("truth") else "--" if name.endswith("outside-marks") else "-"
            axes.plot(*zip(*points), marker=".", linestyle=style, label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlim(1 / 16, 64)
    axes.set_ylim(0, 1)
    for rate in (1 / 8, 8):
        axes.axvline(rate, color="grey", linewidth=0.5)
    axes.set_xlabel("false-positive components per image (CPM reads 1/8 ... 8)")
    axes.set_ylabel("lesion sensitivity")
    axes.set_title("FROC")
    axes.legend(fontsize=7)
