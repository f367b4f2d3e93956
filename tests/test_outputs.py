"""outputs: the typed run.json and eval.json, read back with one-line errors naming the file and the fix.

That a file written by training or evaluation reads into its model and writes back byte for
byte is checked where those files are made (test_training.py, test_score.py).
"""

import json

import pytest
from helpers import eval_record, one_line_error

from retinaseg.core.outputs import EvalRecord, RunRecord

EVAL_FIX = "`dvc repro evaluate@<variant>`"
RUN_FIX = "`dvc repro train@<task>`"


def scores(f1):
    return {"micro": {"f1": f1}, "core": {"micro": {"f1": f1}}}


@pytest.fixture
def written(tmp_path):
    """An eval.json of two classes, as its model writes it, and its content."""
    path = tmp_path / "eval.json"
    eval_record("multiclass", red=scores(0.5), bright=scores(float("nan"))).write(path)
    return path, json.loads(path.read_text())


def test_each_class_is_written_between_froc_rule_and_macro_and_read_back(written):
    path, content = written
    keys = list(content)
    assert keys[keys.index("froc_rule") + 1:keys.index("macro")] == ["red", "bright"]
    assert content["bright"]["micro"]["f1"] is None  # NaN, which JSON lacks
    evaluation = EvalRecord.read(path)
    assert evaluation.lesion_classes == ["red", "bright"] and evaluation.by_class["red"] == scores(0.5)
    assert evaluation.as_written() == content


def test_the_reserved_keys_are_every_top_level_key_but_the_classes(written):
    _, content = written
    assert set(EvalRecord.reserved_keys()) == set(content) - {"red", "bright"}


@pytest.mark.parametrize("change, says", [
    (lambda content: content.pop("thresholds"), "no key 'thresholds'"),
    (lambda content: content.update(n_images="3"), "n_images = '3'"),
    (lambda content: content.update(threshold_source="guessed"), "threshold_source = 'guessed'"),
    (lambda content: content.update(lesion_classes=["red"]), "unknown key 'bright'"),
    (lambda content: content.pop("bright"), "scores for red but lesion_classes red, bright"),
    (lambda content: content.update(thresholds={"red": 0.5}), "thresholds for red but lesion_classes red, bright"),
    (lambda content: content.update(lesion_classes="red"), "lesion_classes = 'red'"),
    (lambda content: content.update(lesion_classes=["red", "bright", "macro"]), "'macro' is named like a key"),
])
def test_an_invalid_eval_json_is_one_line_naming_the_file_the_key_and_the_fix(written, change, says):
    path, content = written
    change(content)
    path.write_text(json.dumps(content))
    one_line_error(lambda: EvalRecord.read(path), f"{path}: not a valid eval.json", says, EVAL_FIX)


@pytest.mark.parametrize("text, says", [(None, "missing"), ("{not json", "not valid JSON"),
                                        ("[]", "expected an object of keys"), ("folder", "unreadable")])
def test_a_missing_or_unparsable_file_is_one_line_naming_it_and_the_fix(tmp_path, text, says):
    path = tmp_path / "eval.json"
    if text == "folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    one_line_error(lambda: EvalRecord.read(path), f"{path}: ", says, EVAL_FIX)
    one_line_error(lambda: RunRecord.read(path), f"{path}: ", says, RUN_FIX)


def test_a_run_json_keeps_the_keys_it_was_given_in_the_order_of_the_model(tmp_path):
    path = tmp_path / "run.json"
    RunRecord(classes=["hemorrhages"], task="binary", best_dice=0.5).write(path)
    assert list(json.loads(path.read_text())) == ["task", "classes", "best_dice"]
    path.write_text(json.dumps({"task": "binary", "run_id": "abc"}))  # an older training's key is kept
    run = RunRecord.read(path)
    assert run.task == "binary" and run.image_size is None and run.as_written() == {"task": "binary", "run_id": "abc"}


@pytest.mark.parametrize("content, says", [({"image_size": "32"}, "image_size = '32'"),
                                           ({"classes": "red"}, "classes = 'red'"),
                                           ({"crop_to_fundus": 1}, "crop_to_fundus = 1")])
def test_a_mistyped_run_json_is_one_line_naming_the_file_the_key_and_the_fix(tmp_path, content, says):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    one_line_error(lambda: RunRecord.read(path), f"{path}: not a valid run.json", says, RUN_FIX)
