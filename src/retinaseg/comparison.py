"""Side-by-side table of every task's test scores, with the tutorial's published figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: The tutorial's binary (haemorrhage) test result on real DIARETDB1 images 28-89,
#: per-image mean, as published. A reference only: our default run uses synthetic data.
PUBLISHED_TUTORIAL = {"precision": 0.160, "recall": 0.149, "iou": 0.091, "f1": 0.130}
SCORES = ("f1", "iou", "precision", "recall")


def _cell(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def comparison_rows(metrics_dir: Path, models_dir: Path, tasks: list[str]) -> list[dict[str, Any]]:
    """One row per task and lesion class: pooled (micro) and per-image-mean scores, cost."""
    rows = []
    for task in tasks:
        evaluation = json.loads((metrics_dir / task / "eval.json").read_text())
        run = json.loads((models_dir / task / "run.json").read_text())
        for name in evaluation["lesion_classes"]:
            rows.append({"task": task, "class": name, **{s: evaluation[name]["micro"][s] for s in SCORES},
                         **{f"{s}_per_image": evaluation[name]["per_image_mean_zero_filled"][s] for s in SCORES},
                         "train_seconds": run["train_seconds"], "parameters": run["parameters"],
                         "precision_used": run["precision"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ("| task | class | Dice | IoU | precision | recall | per-image F1 | per-image IoU | "
              "per-image precision | per-image recall | train s | parameters |")
    lines = ["# Test-split comparison", "",
             "Pooled scores count every test pixel once (micro); per-image scores are the mean over "
             "test images with undefined values counted as 0, the way the tutorial reported them.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        cells = [row["task"], row["class"], *(_cell(row[s]) for s in SCORES),
                 *(_cell(row[f"{s}_per_image"]) for s in SCORES),
                 f"{row['train_seconds']:.0f}", f"{row['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    published = [_cell(PUBLISHED_TUTORIAL[s]) for s in SCORES]
    lines.append("| published tutorial (real DIARETDB1, images 28-89) | hemorrhages | n/a | n/a | n/a | n/a | "
                 + " | ".join(published) + " | n/a | n/a |")
    lines += ["", "Binary `hemorrhages` and multi-class `red` (hemorrhages + red small dots) are the "
              "closest shared class; `bright` (hard + soft exudates) exists only in the multi-class task."]
    return "\n".join(lines) + "\n"
