"""The comparison report: scores on different data never share an axis."""

import math

from retinaseg import comparison

ROW = {"variant": "binary", "init_from": "scratch", "class": "hemorrhages", "threshold": 0.35, "target_f1": 0.4,
       **{f"{s}_per_image": 0.3 for s in comparison.SCORES}, **{f"core_{s}": 0.5 for s in comparison.SCORES},
       "core_lesion_sensitivity": 0.7, "core_fp_components_per_image": 1.5,
       "core_optic_disc_components_per_image": None, "predicted_fov_share": 0.02, "reference_fov_share": 0.018,
       "core_auc_pr": 0.45, "epochs": 3, "train_seconds": 12.0, "parameters": 1000}


def test_published_bars_only_on_real_data():
    labels, values = comparison.bar_groups([ROW], real_data=False)
    assert labels == ["binary\nhemorrhages"] and all(len(v) == 1 for v in values.values())
    labels, values = comparison.bar_groups([ROW], real_data=True)
    assert "published tutorial" in labels[-1] and values["core_f1"][-1] == comparison.PUBLISHED_TUTORIAL["f1"]
    assert math.isnan(values["core_lesion_sensitivity"][-1])  # never published


def test_table_labels_the_published_row_with_its_data():
    synthetic = comparison.markdown([ROW], real_data=False)
    assert "**real** DIARETDB1" in synthetic and "not comparable" in synthetic and "Data: synthetic" in synthetic
    assert "| binary | scratch | hemorrhages | 0.35 | 0.500 |" in synthetic
    assert "| 2.00 | 1.80 |" in synthetic  # predicted and core share of the field of view, in %
    assert "not comparable" not in comparison.markdown([ROW], real_data=True)
