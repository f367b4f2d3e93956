"""The few figures that decide an experiment, as the DVC metrics ``dvc exp show`` lists.

eval.json holds hundreds of figures per model; as DVC metrics they made ``dvc exp show``
unreadable. Each model instead gets two small metrics files, one from its training
(``metrics/train/<variant>/train.json``) and one from its evaluation
(``metrics/eval/<variant>/summary.json``). DVC prefixes a key with its file's path when two
files share it, so every key starts with the model's short name (``model_key``): the columns
then read ``binary.hemorrhages.cpm``, ``transfer.red.dice``, ``transfer.train_s``.

Per lesion class: ``cpm`` (FROC CPM against the core) and ``dice`` (core Dice). Per model,
at the chosen operating point, over all its classes: ``found`` (share of core lesions
found), ``fp`` (false-positive components per image) and ``area`` (predicted area over the
core's). From training: ``best_val_dice`` (or ``best_dice`` without validation images) and
``train_s`` (seconds of fitting).
"""

from __future__ import annotations

from typing import Any

from retinaseg.core.outputs import EvalRecord

#: The transferred model's variant ends so (``<transfer.task>_transfer``); its key is this word alone.
TRANSFER_SUFFIX = "_transfer"


def model_key(variant: str) -> str:
    """The short, unique first key of a model's figures: its task, or ``transfer`` for the transferred model."""
    return "transfer" if variant.endswith(TRANSFER_SUFFIX) else variant


def evaluation_figures(summary: EvalRecord) -> dict[str, Any]:
    """The deciding figures of an eval.json summary, under the model's key."""
    classes = [scores["core"] for scores in summary.by_class.values()]
    lesions = [core["lesion"] for core in classes]
    references = sum(counts["n_reference_lesions"] for counts in lesions)
    found = sum(counts["n_found_lesions"] for counts in lesions)
    reference_share = sum(core["reference_fov_share"] for core in classes)
    figures = {name: {"cpm": core["froc"]["cpm"], "dice": core["micro"]["f1"]}
               for name, core in zip(summary.by_class, classes)}
    figures.update({
        "found": found / references if references else None,
        "fp": sum(counts["n_fp_components"] for counts in lesions) / summary.n_images,
        "area": sum(core["predicted_fov_share"] for core in classes) / reference_share if reference_share else None,
    })
    return {model_key(summary.variant): figures}


def training_figures(variant: str, monitor: str, best: float, seconds: float) -> dict[str, Any]:
    """The deciding figures of a training: its best epoch's ``monitor`` and the seconds it took, under its key."""
    return {model_key(variant): {f"best_{monitor}": best, "train_s": round(seconds, 1)}}

