"""summary: the deciding figures, under one short key per model, read from an eval.json summary."""

import pytest
from helpers import eval_record

from retinaseg.tracking.summary import evaluation_figures, model_key, training_figures


def class_scores(found, references, fp, predicted, core, cpm, dice):
    return {"core": {"froc": {"cpm": cpm}, "micro": {"f1": dice}, "predicted_fov_share": predicted,
                     "reference_fov_share": core,
                     "lesion": {"n_found_lesions": found, "n_reference_lesions": references, "n_fp_components": fp}}}


def test_keys_are_short_and_unique_across_models():
    assert [model_key(v) for v in ("binary", "multiclass", "multiclass_transfer")] == \
        ["binary", "multiclass", "transfer"]


def test_a_model_gets_cpm_and_dice_per_class_and_pooled_lesion_figures():
    summary = eval_record("multiclass_transfer", n_images=4, red=class_scores(3, 10, 6, 0.02, 0.01, 0.5, 0.3),
                          bright=class_scores(1, 10, 2, 0.01, 0.01, 0.25, 0.4))
    figures = evaluation_figures(summary)["transfer"]
    assert figures["red"] == {"cpm": 0.5, "dice": 0.3} and figures["bright"] == {"cpm": 0.25, "dice": 0.4}
    assert figures["found"] == 4 / 20 and figures["fp"] == 8 / 4 and figures["area"] == pytest.approx(1.5)


def test_without_reference_lesions_or_area_the_ratios_are_null():
    summary = eval_record("binary", n_images=2, hemorrhages=class_scores(0, 0, 1, 0.01, 0.0, 0.0, None))
    figures = evaluation_figures(summary)["binary"]
    assert figures["found"] is None and figures["area"] is None and figures["fp"] == 0.5


def test_training_figures_name_the_monitored_score():
    assert training_figures("binary", "val_dice", 0.5, 12.34) == {"binary": {"best_val_dice": 0.5, "train_s": 12.3}}
    assert training_figures("binary", "dice", 0.5, 1.0) == {"binary": {"best_dice": 0.5, "train_s": 1.0}}
