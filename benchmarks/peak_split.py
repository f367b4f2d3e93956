"""Would splitting big components at their peaks find more lesions? ``python -m benchmarks.peak_split``.

A model trained on the annotators' coarse regions predicts regions, and a component finds one
drawn lesion at most: one component over a group of lesions counts once. This rescoring splits
every cleaned component of at least ``min_area`` pixels into watershed basins around its local
maxima (within ``radius`` pixels) that rise at least ``rise`` above the threshold, and reads the
FROC exactly as evaluation does otherwise (same thresholds, cleaning, references). Pixels, and so
Dice, do not change: only what counts as one detection.

    python -m benchmarks.peak_split --reference data/prepared/test --task binary \\
        --predictions PRED_DIR [PRED_DIR ...] [--split 100,5,0.15 ...]

Each PRED_DIR is a folder of saved test predictions (``data/predictions/<model>`` of one run,
e.g. copied after each of ``dvc exp run -S train.seed=S -S augment.seed=S evaluate@binary``).
Prints the CPM of every reference per folder and the mean ± sd over folders, for today's
components and for each split setting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from retinaseg.core.arrays import load_set
from retinaseg.evaluation import anatomy, froc, score, truth

#: Default split settings: min_area (px), radius (px), rise (probability).
SETTINGS = ((100, 5, 0.15),)


def split_at_peaks(min_area: int, radius: int, rise: float):
    """A ``froc.sweeps`` detections rule: cleaned components, those of ``min_area`` pixels or more split at peaks."""

    def detections(plane, threshold, fov, min_component_px, disc):
        labels, keep = froc.cleaned_components(plane, threshold, fov, min_component_px, disc)
        sizes = np.bincount(labels.ravel(), minlength=len(keep))
        big = keep[labels] & (sizes[labels] >= min_area)
        peaks = big & (plane >= ndimage.maximum_filter(np.where(big, plane, -1), size=2 * radius + 1))
        peaks &= plane >= threshold + rise
        markers, count = ndimage.label(peaks, structure=np.ones((3, 3)))
        split = big & np.isin(labels, np.unique(labels[peaks]))  # big components without a peak stay whole
        if not count:
            return labels, keep
        seeds = np.where(markers > 0, markers + len(keep), 0).astype(np.int32)
        seeds[~split] = -1
        basins = ndimage.watershed_ift(np.round((1 - plane) * 65535).astype(np.uint16), seeds)
        relabelled = np.where(split, np.maximum(basins, 0), np.where(keep[labels], labels, 0))
        kept = np.zeros(relabelled.max() + 1, dtype=bool)
        kept[np.unique(relabelled)] = True
        kept[0] = False
        return relabelled, kept

    return detections


def cpms(reference_dir: Path, task_name: str, predictions: Path, rules: dict) -> dict[str, dict[str, float]]:
    """Rule name -> reference -> CPM of the first lesion class of ``task_name`` in one folder of predictions."""
    task = score.reference_task(reference_dir, task_name)
    reference = load_set(reference_dir, task.name, core=True)
    ids = reference["ids"].tolist()
    probability = score.read_predictions(predictions, ids, (*reference[task.name].shape[1:3], task.num_planes))
    plane, name = task.lesion_planes[0], task.lesion_names[0]
    simulated = truth.read_truth(reference_dir)
    drawn = ([truth.class_lesions(simulated, image_id, task.classes[name]) for image_id in ids]
             if simulated is not None and task.classes[name] else None)
    marked = reference.get(f"marked_{task.name}")
    references = score.detection_references(reference[f"core_{task.name}"].astype(bool)[..., plane],
                                            None if marked is None else marked[..., plane], drawn, simulated)
    fov = reference["fov"]
    discs = [anatomy.optic_disc_mask(image, fov) for image in reference["images"]]
    return {rule: {ref: swept.summary()["cpm"] for ref, swept in froc.sweeps(
                probability[..., plane], fov, discs, 3, references, detections=detections).items()}
            for rule, detections in rules.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peak_split", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=Path("data/prepared/test"))
    parser.add_argument("--task", default="binary")
    parser.add_argument("--predictions", type=Path, nargs="+", required=True)
    parser.add_argument("--split", nargs="*", default=[",".join(map(str, s)) for s in SETTINGS],
                        metavar="MIN_AREA,RADIUS,RISE")
    args = parser.parse_args(argv)
    rules = {"components": froc.cleaned_components}
    for setting in args.split:
        area, radius, rise = setting.split(",")
        rules[f"split {setting}"] = split_at_peaks(int(area), int(radius), float(rise))
    results = []
    for folder in args.predictions:
        results.append(cpms(args.reference, args.task, folder, rules))
        print(f"{folder}: " + "; ".join(f"{rule}: " + ", ".join(f"{ref} {value:.3f}" for ref, value in by_ref.items())
                                       for rule, by_ref in results[-1].items()), flush=True)
    for rule in rules:
        parts = []
        for ref in results[0][rule]:
            values = [result[rule][ref] for result in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            parts.append(f"{ref} CPM {statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"{rule}, over {len(results)} folder(s): " + ", ".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
