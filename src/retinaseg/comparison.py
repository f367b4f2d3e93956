"""Every trained variant side by side: a markdown table and a figure, with the tutorial's figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

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
    "image": "an image is positive for a class when its reference has any lesion pixel, and predicted "
             "positive when the prediction has a component",
    "empty": "scores with a zero denominator (e.g. Dice with empty reference and prediction) are null and "
             "left out of means; n_images_scored says how many images each mean covers",
}


def _cell(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def comparison_rows(metrics_dir: Path, models_dir: Path, variants: list[str]) -> list[dict[str, Any]]:
    """One row per variant and lesion class: scores against the core and the target, lesion level, cost."""
    rows = []
    for variant in variants:
        evaluation = json.loads((metrics_dir / variant / "eval.json").read_text())
        run = json.loads((models_dir / variant / "run.json").read_text())
        for name in evaluation["lesion_classes"]:
            scores, core = evaluation[name], evaluation[name]["core"]
            rows.append({"variant": variant, "task": run["task"], "init_from": run.get("init_from", "scratch"),
                         "class": name, "threshold": evaluation["thresholds"][name],
                         "target_f1": scores["micro"]["f1"],
                         **{f"{s}_per_image": scores["per_image_mean_zero_filled"][s] for s in SCORES},
                         **{f"core_{s}": core["micro"][s] for s in SCORES},
                         **{f"core_{s}": core["lesion"].get(s) for s in CORE_LESION_SCORES},
                         "predicted_fov_share": core["predicted_fov_share"],
                         "reference_fov_share": core["reference_fov_share"], "core_auc_pr": core["pr"]["auc_pr"],
                         "train_seconds": run["train_seconds"], "epochs": run["epochs"],
                         "parameters": run["parameters"], "mixed_precision": run["mixed_precision"],
                         "run_id": run["run_id"]})
    return rows


def markdown(rows: list[dict[str, Any]], real_data: bool) -> str:
    """The comparison table; the published tutorial row is labelled with the data it was measured on."""
    header = ("| variant | init | class | threshold | core Dice | core precision | core recall | "
              "core lesions found | FP components / image | optic-disc components / image | "
              "predicted % of FOV | core % of FOV | core AUC-PR | target Dice | per-image F1 | per-image IoU | "
              "per-image precision | per-image recall | epochs | train s | parameters |")
    columns = header.count("|") - 1
    data = "real DIARETDB1" if real_data else "synthetic DIARETDB1-like data (data.source: synthetic)"
    lines = ["# Test-split comparison", "", f"Data: {data}.", "",
             "Core columns score against the lesion core and count lesions there; target Dice scores against "
             "the training target. Pooled scores count every test pixel once; per-image scores (against the "
             "target) are the mean over test images with undefined values counted as 0, the way the tutorial "
             "reported them. The rules are below the table.", "",
             header, "|" + "---|" * columns]
    for row in rows:
        cells = [row["variant"], row["init_from"], row["class"], _cell(row["threshold"], 2),
                 *(_cell(row[f"core_{s}"]) for s in ("f1", "precision", "recall")),
                 *(_cell(row[f"core_{s}"]) for s in CORE_LESION_SCORES),
                 _cell(100 * row["predicted_fov_share"], 2), _cell(100 * row["reference_fov_share"], 2),
                 _cell(row["core_auc_pr"]), _cell(row["target_f1"]),
                 *(_cell(row[f"{s}_per_image"]) for s in SCORES),
                 str(row["epochs"]), f"{row['train_seconds']:.0f}", f"{row['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    published = ["published tutorial (**real** DIARETDB1, images 28-89, threshold 0.1 target)", "scratch",
                 "hemorrhages", *(["n/a"] * 11), *(_cell(PUBLISHED_TUTORIAL[s]) for s in SCORES)]
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


def read_curve(path: Path) -> dict[str, list[float]]:
    """Columns of a Keras CSVLogger file (tab-separated) as float lists."""
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle, delimiter="\t"))
    return {key: [float(record[key]) for record in records] for key in (records[0] if records else {})}


#: Bars of the comparison figure: key of a comparison row and its label.
BAR_SCORES = {"core_f1": "core Dice", "core_precision": "core precision", "core_recall": "core recall",
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


def figure(rows: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]], path: Path,
           real_data: bool) -> None:
    """Core scores per variant and class beside the validation-Dice curves, saved as a PNG.

    The published tutorial bars are drawn only for real data: scores on different data must
    not share an axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, values = bar_groups(rows, real_data)
    shown = BAR_SCORES
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(shown)
    for index, (key, label) in enumerate(shown.items()):
        bars.bar(np.arange(len(labels)) + (index - (len(shown) - 1) / 2) * width, values[key], width, label=label)
    bars.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    bars.set_ylim(0, 1)
    bars.set_title(f"Test split against the lesion core ({'real' if real_data else 'synthetic'} data)")
    bars.legend(fontsize=8, ncols=len(shown), loc="upper center", bbox_to_anchor=(0.5, -0.18))
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
