"""The comparison report: scores on different data never share an axis, and the rules it states are those applied."""

import json
import math

import numpy as np
import pytest
from helpers import eval_record, one_line_error

from retinaseg.compare import report
from retinaseg.core.atomic import write_json
from retinaseg.core.tasks import Task
from retinaseg.evaluation.score import Scoring, score

ROW = {"variant": "binary", "init_from": "scratch", "class": "hemorrhages", "threshold": 0.35,
       "threshold_rule": "fixed by evaluate.threshold in params.yaml", "target_f1": 0.4,
       **{f"{s}_per_image": 0.3 for s in report.SCORES}, **{f"core_{s}": 0.5 for s in report.SCORES},
       "core_lesion_sensitivity": 0.7, "core_fp_components_per_image": 1.5,
       "core_optic_disc_components_per_image": None, "predicted_fov_share": 0.02, "reference_fov_share": 0.018,
       "core_auc_pr": 0.45, "epochs": 3, "train_seconds": 12.0, "parameters": 1000,
       "core_cpm": 0.25, "core_cpm_ci95": [0.2, 0.3], "core_sensitivity_at_1_fp": 0.4, "core_f1_ci95": [0.45, 0.55],
       "core_found": 0.7, "core_fp": 1.5, "core_outside_marks_cpm": 0.6, "core_outside_marks_cpm_ci95": [0.5, 0.7],
       "truth_cpm": None, "truth_cpm_ci95": None,
       "truth_sensitivity_at_1_fp": None, "truth_found": None, "truth_fp": None}


def test_published_bars_only_on_real_data():
    labels, values = report.bar_groups([ROW], real_data=False)
    assert labels == ["binary\nhemorrhages"] and all(len(v) == 1 for v in values.values())
    labels, values = report.bar_groups([ROW], real_data=True)
    assert "published tutorial" in labels[-1] and values["core_f1"][-1] == report.PUBLISHED_TUTORIAL["f1"]
    assert math.isnan(values["core_lesion_sensitivity"][-1])  # never published


def test_table_labels_the_published_row_with_its_data():
    synthetic = report.markdown([ROW], real_data=False)
    assert "**real** DIARETDB1" in synthetic and "not comparable" in synthetic and "Data: synthetic" in synthetic
    assert "| binary | scratch | hemorrhages | 0.350 | 0.250 [0.200, 0.300] | 0.400 | 0.600 [0.500, 0.700] | " \
        "n/a | n/a | n/a | " \
        "0.500 [0.450, 0.550] | 0.500 |" in synthetic
    assert "| 2.00 | 1.80 |" in synthetic  # predicted and core share of the field of view, in %
    assert "not comparable" not in report.markdown([ROW], real_data=True)


def test_rows_read_the_eval_json_that_scoring_writes(tmp_path):
    """comparison_rows and score agree on eval.json's keys: two 16x16 images, one false-positive blob."""
    core = np.zeros((2, 16, 16, 1), np.uint8)
    core[0, 4:7, 4:7] = core[1, 9:12, 9:12] = 1
    images = np.full((2, 16, 16, 3), 120, np.uint8)
    reference = {"images": images, "ids": np.array([1, 2], np.int32), "fov": np.ones((16, 16), bool),
                 "binary": core, "core_binary": core}
    probabilities = core.astype(np.float32)
    probabilities[1, 1:3, 1:4] = 0.9  # 6 false-positive pixels beside 9 + 9 found
    task = Task("binary", {"hemorrhages": ("hemorrhages",)})
    scoring = Scoring.fixed({"hemorrhages": 0.35}, "params", pr_thresholds=11)
    summary, _, _ = score(reference, probabilities, task, scoring, "binary", 0.75)
    summary.write(tmp_path / "metrics" / "binary" / "eval.json")
    write_json(tmp_path / "models" / "binary" / "run.json",
               {"task": "binary", "epochs": 3, "parameters": 1000, "mixed_precision": "float32"})
    write_json(tmp_path / "train" / "binary" / "train.json", {"binary": {"best_val_dice": 0.5, "train_s": 12.0}})
    [row] = report.comparison_rows(tmp_path / "metrics", tmp_path / "train", tmp_path / "models", ["binary"])
    assert row["train_seconds"] == 12.0
    assert row["class"] == "hemorrhages" and row["threshold"] == 0.35 and row["init_from"] == "scratch"
    assert row["core_precision"] == 18 / 24 and row["core_recall"] == 1.0 and row["core_f1"] == 36 / 42
    assert row["core_lesion_sensitivity"] == 1.0 and row["core_fp_components_per_image"] == 0.5
    assert row["target_f1"] == row["core_f1"] and row["predicted_fov_share"] == 24 / 512
    # At thresholds over 0.9 both lesions are found without the false alarm: sensitivity 1 at every rate.
    assert row["core_cpm"] == 1.0 and row["core_sensitivity_at_1_fp"] == 1.0 and row["truth_cpm"] is None
    table = report.markdown([row], real_data=False)
    assert "| binary | scratch | hemorrhages | 0.350 | 1.000 [1.000, 1.000] | 1.000 | n/a | n/a | n/a | n/a | 0.857 " \
        in table
    assert "- **thresholds**: fixed by evaluate.threshold in params.yaml." in table


def test_rows_are_ranked_by_core_cpm_and_unscored_rows_go_last_in_their_order():
    rows = [{"variant": name, "core_cpm": cpm}
            for name, cpm in [("a", 0.2), ("b", None), ("c", 0.5), ("d", math.nan), ("e", 0.5), ("f", 0.0)]]
    assert [row["variant"] for row in report.ranked(rows)] == ["c", "e", "a", "f", "b", "d"]


VALIDATION_RULES = {
    "fp_per_image": "chosen per class on the validation images for evaluate.operating_point fp_per_image: the most "
                    "core lesions with at most 1 false positives per image outside every annotator's mark and at "
                    "most 2x the core's area",
    "f_beta": "chosen per class on the validation images for evaluate.operating_point f_beta: the best pixel F0.5 "
              "against the core",
}


def rules_of(operating_point, variant="binary"):
    """An evaluation of ``variant`` whose thresholds were chosen on the validation images for ``operating_point``."""
    return eval_record(variant, hemorrhages={}).model_copy(update={"operating_point": operating_point,
                                                                   "threshold_beta": 0.5})


@pytest.mark.parametrize("operating_point", VALIDATION_RULES)
def test_the_table_states_the_operating_point_the_thresholds_were_chosen_for(operating_point):
    row = {**ROW, "threshold_rule": rules_of(operating_point).threshold_rule()}
    table = report.markdown([row], real_data=False)
    assert f"- **thresholds**: {VALIDATION_RULES[operating_point]}." in table
    assert "F-beta" not in table and operating_point in table


def test_variants_whose_thresholds_were_set_differently_each_get_their_rule():
    rows = [{**ROW, "variant": variant, "threshold_rule": rules_of(point, variant).threshold_rule()}
            for variant, point in [("binary", "fp_per_image"), ("multiclass", "f_beta"), ("other", "fp_per_image")]]
    assert (f"- **thresholds**: binary, other: {VALIDATION_RULES['fp_per_image']}; "
            f"multiclass: {VALIDATION_RULES['f_beta']}.") in report.markdown(rows, real_data=False)


@pytest.mark.parametrize("source, simulated_truth, real", [
    ("synthetic", False, False),  # generated by fetch in the easy style, which keeps no simulated truth
    ("copies/synthetic.zip", True, False),  # a copy of generated data holds the lesions drawn
    ("downloads/diaretdb1_v_1_1.zip", False, True),
    ("diaretdb1", False, True),
])
def test_real_data_is_told_from_the_prepared_data_not_from_where_it_came_from(tmp_path, source, simulated_truth, real):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"split": {}, "simulated_truth": simulated_truth}))
    assert report.is_real_data(source, manifest) is real
    synthetic_data = report.markdown([ROW], real_data=report.is_real_data(source, manifest))
    assert ("not comparable" in synthetic_data) is not real


@pytest.mark.parametrize("content, says", [(None, "FileNotFoundError"), ("{}", "KeyError"),
                                           ('{"simulated_truth": "yes"}', "simulated_truth = 'yes'")])
def test_a_manifest_that_cannot_tell_is_a_one_line_error(tmp_path, content, says):
    manifest = tmp_path / "manifest.json"
    if content is not None:
        manifest.write_text(content)
    one_line_error(lambda: report.is_real_data("copies/synthetic.zip", manifest), str(manifest), says,
                   "`dvc repro prepare`")
