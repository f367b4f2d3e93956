"""Every trained variant side by side: a markdown table and a figure, with the tutorial's figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

#: The tutorial's binary (haemorrhage) test result on real DIARETDB1 images 28-89,
#: per-image mean, as published. A reference only: our default run uses synthetic data.
PUBLISHED_TUTORIAL = {"precision": 0.160, "recall": 0.149, "iou": 0.091, "f1": 0.130}
SCORES = ("f1", "iou", "precision", "recall")
LESION_SCORES = ("lesion_sensitivity", "fp_components_per_image", "image_sensitivity", "image_specificity")

#: How the lesion and image-level figures of eval.json are counted; printed under the table.
LESION_RULES = {
    "lesion": "a reference lesion is an 8-connected component of a class's reference plane; it is found "
              "when at least one of its pixels is predicted, after predicted components smaller than "
              "evaluate.min_component_px are dropped",
    "false_positive_component": "an 8-connected predicted component of at least evaluate.min_component_px pixels "
                                "that touches no reference pixel of the class",
    "image": "an image is positive for a class when its reference has any lesion pixel, and predicted "
             "positive when the prediction has a component of at least evaluate.min_component_px pixels",
    "empty": "scores with a zero denominator (e.g. Dice with empty reference and prediction) are null and "
             "left out of means; n_images_scored says how many images each mean covers",
}


def _cell(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def comparison_rows(metrics_dir: Path, models_dir: Path, variants: list[str]) -> list[dict[str, Any]]:
    """One row per variant and lesion class: pooled and per-image scores, lesion level, cost."""
    rows = []
    for variant in variants:
        evaluation = json.loads((metrics_dir / variant / "eval.json").read_text())
        run = json.loads((models_dir / variant / "run.json").read_text())
        for name in evaluation["lesion_classes"]:
            scores = evaluation[name]
            rows.append({"variant": variant, "task": run["task"], "init_from": run.get("init_from", "scratch"),
                         "class": name, **{s: scores["micro"][s] for s in SCORES},
                         **{f"{s}_per_image": scores["per_image_mean_zero_filled"][s] for s in SCORES},
                         **{s: scores["lesion"][s] for s in LESION_SCORES},
                         "auc_pr": scores["pr"]["auc_pr"], "train_seconds": run["train_seconds"],
                         "epochs": run["epochs"], "parameters": run["parameters"],
                         "mixed_precision": run["mixed_precision"], "run_id": run["run_id"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ("| variant | init | class | Dice | IoU | precision | recall | per-image F1 | per-image IoU | "
              "per-image precision | per-image recall | lesion sensitivity | FP lesions / image | "
              "image sensitivity | image specificity | AUC-PR | epochs | train s | parameters |")
    columns = header.count("|") - 1
    lines = ["# Test-split comparison", "",
             "Pooled scores count every test pixel once (micro); per-image scores are the mean over "
             "test images with undefined values counted as 0, the way the tutorial reported them. "
             "Lesion and image-level columns follow the rules below the table.", "",
             header, "|" + "---|" * columns]
    for row in rows:
        cells = [row["variant"], row["init_from"], row["class"], *(_cell(row[s]) for s in SCORES),
                 *(_cell(row[f"{s}_per_image"]) for s in SCORES), *(_cell(row[s]) for s in LESION_SCORES),
                 _cell(row["auc_pr"]), str(row["epochs"]), f"{row['train_seconds']:.0f}", f"{row['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    published = ["published tutorial (real DIARETDB1, images 28-89)", "scratch", "hemorrhages",
                 *(["n/a"] * len(SCORES)), *(_cell(PUBLISHED_TUTORIAL[s]) for s in SCORES)]
    lines.append("| " + " | ".join(published + ["n/a"] * (columns - len(published))) + " |")
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


def figure(rows: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Scores per variant and class beside the validation-Dice curves, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{row['variant']}\n{row['class']}" for row in rows] + ["published tutorial\n(real data, per image)"]
    shown = ("f1", "iou", "precision", "recall", "lesion_sensitivity")
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(shown)
    for index, score in enumerate(shown):
        values = [row[score] if row[score] is not None else np.nan for row in rows]
        values.append(PUBLISHED_TUTORIAL.get(score, np.nan))
        bars.bar(np.arange(len(labels)) + (index - (len(shown) - 1) / 2) * width, values, width,
                 label={"f1": "Dice", "iou": "IoU"}.get(score, score.replace("_", " ")))
    bars.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    bars.set_ylim(0, 1)
    bars.set_title("Test split (pooled pixels; lesion sensitivity per lesion)")
    bars.legend(fontsize=8, ncols=len(shown), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    for variant, curve in curves.items():
        if curve:  # validation Dice where a validation split exists, else training Dice
            key = "val_dice" if "val_dice" in curve else "dice"
            lines.plot(np.array(curve["epoch"]) + 1, curve[key], marker=".", label=f"{variant} ({key})")
    lines.set_xlabel("epoch")
    lines.set_ylabel("Dice")
    lines.set_ylim(0, 1)
    lines.set_title("Dice per epoch")
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
