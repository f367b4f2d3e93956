"""score: prediction files scored against a prepared set, in memory, from a folder and on the command line."""

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from helpers import CORE_THRESHOLD, eval_record, generate_and_prepare, one_line_error

from retinaseg.core.arrays import load_set
from retinaseg.core.outputs import EvalRecord
from retinaseg.core.tasks import Task
from retinaseg.evaluation.score import (
    Scoring,
    prediction_path,
    read_predictions,
    score,
    score_folder,
    write_predictions,
)

TASKS = {task.name: task for task in (
    Task("multiclass", {"red": ("hemorrhages", "redsmalldots"), "bright": ("hardexudates", "softexudates")}),
    Task("binary", {"hemorrhages": ("hemorrhages",)}))}
RULES = Scoring(thresholds={"red": 0.4, "bright": 0.6}, threshold_source="validation", operating_point="f_beta",
                target_fp_per_image=None, max_area_ratio=None, threshold_beta=0.5, min_component_px=2,
                drop_on_optic_disc=True, pr_thresholds=11)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Six easy synthetic images prepared at 32 px: train 1-3, test 4-6."""
    root = tmp_path_factory.mktemp("score")
    manifest = generate_and_prepare(root, num_images=6, size=(150, 116), style="easy", image_size=32,
                                    train_ids="1-3", tasks=list(TASKS.values()))
    for task in TASKS.values():  # every class has core pixels to find in the test split
        assert all(count > 0 for count in manifest["tasks"][task.name]["core_pixels"]["test"].values())
    return root / "prepared" / "test"


def reference(prepared, task):
    return load_set(prepared, task.name, core=True)


def noisy(prepared, task, seed=0):
    """Float32 probabilities [N,32,32,C] that lean towards the core but make every kind of error."""
    ref = reference(prepared, task)
    rng = np.random.default_rng(seed)
    core = ref[f"core_{task.name}"].astype(np.float32)
    if task.is_multiclass:
        return (0.4 * core + 0.6 * rng.dirichlet(np.ones(task.num_planes), core.shape[:3])).astype(np.float32)
    return (0.4 * core + 0.6 * rng.random(core.shape)).astype(np.float32)


def write(folder, prepared, probabilities):
    write_predictions(folder, reference(prepared, TASKS["binary"])["ids"].tolist(), probabilities)
    return folder


@pytest.mark.parametrize("name", TASKS)
def test_perfect_predictions_score_core_dice_1_without_false_positives(prepared, tmp_path, name):
    task = TASKS[name]
    core = reference(prepared, task)[f"core_{name}"]
    folder = write(tmp_path / name, prepared, core.astype(np.float32))
    scoring = Scoring.fixed(dict.fromkeys(task.lesion_names, 0.5), "params")
    summary, curves, predicted = score_folder(prepared, folder, task, scoring, name)
    np.testing.assert_array_equal(predicted[..., task.lesion_planes], core[..., task.lesion_planes].astype(bool))
    assert summary.variant == name and summary.core_threshold == CORE_THRESHOLD and summary.n_images == 3
    for lesion in task.lesion_names:
        at_core = summary.by_class[lesion]["core"]
        assert at_core["micro"]["f1"] == 1.0 and at_core["micro"]["fp"] == 0 and at_core["micro"]["fn"] == 0
        assert at_core["micro"]["tp"] > 0 and at_core["area_ratio"] == 1.0
        assert at_core["lesion"]["lesion_sensitivity"] == 1.0 and at_core["lesion"]["n_fp_components"] == 0
        assert at_core["pr"]["auc_pr"] == 1.0 and at_core["pr"]["best_f1"]["f1"] == 1.0
        assert all(entry[lesion]["core"]["fp"] == 0 for entry in summary.per_image)
        assert curves.pr[lesion][-1] == {"threshold": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
        # Perfect probabilities find every core lesion at every threshold without a false alarm: CPM 1.
        assert at_core["froc"]["cpm"] == 1.0 and at_core["froc"]["sensitivity_at_fp"]["1/8"] == 1.0
        assert at_core["bootstrap"]["cpm_ci95"] == [1.0, 1.0] and at_core["bootstrap"]["f1_ci95"] == [1.0, 1.0]
        assert curves.froc[lesion][0]["n_fp_components"] == 0


@pytest.mark.parametrize("name", TASKS)
def test_scoring_a_folder_equals_scoring_the_arrays_in_memory(prepared, tmp_path, name):
    task = TASKS[name]
    probabilities = noisy(prepared, task)
    folder = write(tmp_path / "predictions", prepared, probabilities)
    assert sorted(path.name for path in folder.iterdir()) == ["image004.npy", "image005.npy", "image006.npy"]
    scoring = RULES.model_copy(update={"thresholds": {lesion: RULES.thresholds.get(lesion, 0.5)
                                                      for lesion in task.lesion_names}})
    from_files = score_folder(prepared, folder, task, scoring, name)
    in_memory = score(reference(prepared, task), probabilities, task, scoring, name, CORE_THRESHOLD)
    assert json.dumps(from_files[0].as_written()) == json.dumps(in_memory[0].as_written())  # NaN-safe comparison
    assert json.dumps(asdict(from_files[1])) == json.dumps(asdict(in_memory[1]))
    np.testing.assert_array_equal(from_files[2], in_memory[2])
    micro = from_files[0].by_class[task.lesion_names[0]]["core"]["micro"]
    assert micro["tp"] > 0 and micro["fp"] > 0  # the noise makes errors to count
    assert from_files[0].thresholds == scoring.thresholds and from_files[0].drop_on_optic_disc is True


#: The keys of eval.json before the lesion classes, each under its name, then the aggregates.
EVAL_JSON_HEAD = ("variant", "task", "thresholds", "threshold_source", "operating_point", "target_fp_per_image",
                  "max_area_ratio", "threshold_beta", "min_component_px", "drop_on_optic_disc", "pr_thresholds",
                  "core_threshold", "n_images", "lesion_classes", "froc_rule")


def assert_round_trip(path, task):
    """``path``, an eval.json as scoring writes it, keeps its layout and reads into its model and back byte for byte."""
    text = path.read_text()
    assert list(json.loads(text)) == [*EVAL_JSON_HEAD, *task.lesion_names, "macro", "micro", "per_image"]
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    EvalRecord.read(path).write(path.with_name("again.json"))
    assert path.with_name("again.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", TASKS)
def test_an_eval_json_reads_into_its_model_and_writes_back_byte_for_byte(prepared, tmp_path, name):
    task = TASKS[name]
    folder = write(tmp_path / "predictions", prepared, noisy(prepared, task))
    scoring = RULES.model_copy(update={"thresholds": {lesion: RULES.thresholds.get(lesion, 0.5)
                                                      for lesion in task.lesion_names}})
    summary, _, _ = score_folder(prepared, folder, task, scoring, name)
    summary.write(tmp_path / "eval.json")  # as evaluation._write_outputs writes it
    assert_round_trip(tmp_path / "eval.json", task)
    result = run_cli("--reference", prepared, "--predictions", folder, "--task", name, "--threshold", 0.5,
                     "--out", tmp_path / "cli" / "eval.json")
    assert result.returncode == 0, result.stderr
    assert_round_trip(tmp_path / "cli" / "eval.json", task)


def test_rules_from_a_missing_or_other_eval_json_are_one_line_errors(tmp_path):
    path = tmp_path / "eval.json"
    one_line_error(lambda: Scoring.from_eval_json(path, ["red"]), f"{path}: missing", "dvc repro evaluate@")
    eval_record(thresholds={"hemorrhages": 0.5}).write(path)
    one_line_error(lambda: Scoring.from_eval_json(path, ["red", "bright"]), str(path), "of the classes hemorrhages, "
                   "not red, bright", "of the same task")
    assert Scoring.from_eval_json(path, ["hemorrhages"]).thresholds == {"hemorrhages": 0.5}


def test_predictions_are_written_and_read_back_per_image(prepared, tmp_path):
    probabilities = noisy(prepared, TASKS["multiclass"])
    folder = write(tmp_path / "predictions", prepared, probabilities)
    np.testing.assert_array_equal(np.load(prediction_path(folder, 5)), probabilities[1])
    np.testing.assert_array_equal(read_predictions(folder, [6, 4], (32, 32, 3)), probabilities[[2, 0]])
    write(folder, prepared, probabilities[:2])  # the folder is replaced, not merged
    assert not prediction_path(folder, 6).exists()


def test_bad_prediction_files_are_one_line_errors(prepared, tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    np.save(folder / "image004.npy", np.zeros((32, 32, 3), np.uint8))
    (folder / "image005.npy").write_bytes(b"not an array")
    one_line_error(lambda: read_predictions(folder, [4], (32, 32, 3)), "image004.npy", "uint8", "expected float")
    one_line_error(lambda: read_predictions(folder, [5], (32, 32, 3)), "image005.npy", "not a .npy array")
    one_line_error(lambda: read_predictions(folder, [6], (32, 32, 3)), "image006.npy", "missing")


@pytest.mark.parametrize("bad", ["levels 0..255", "NaN"])
def test_values_that_are_not_probabilities_are_one_line_errors(prepared, tmp_path, bad):
    task = TASKS["binary"]
    probabilities = noisy(prepared, task)
    if bad == "NaN":
        probabilities[0, 5, 5, 0] = np.nan
    else:
        probabilities *= 255
    folder = write(tmp_path / "predictions", prepared, probabilities)
    scoring = Scoring.fixed({"hemorrhages": 0.5}, "params")
    one_line_error(lambda: score_folder(prepared, folder, task, scoring, "binary"), "image004.npy",
                   "outside [0, 1]")


def run_cli(*args):
    result = subprocess.run([sys.executable, "-m", "retinaseg.evaluation.score", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    return result


def test_command_writes_the_same_eval_json_as_the_evaluate_stage(prepared, tmp_path):
    task = TASKS["multiclass"]
    folder = write(tmp_path / "multiclass", prepared, noisy(prepared, task))
    summary, _, _ = score_folder(prepared, folder, task, RULES, "multiclass")
    summary.write(tmp_path / "eval.json")  # as evaluation._write_outputs writes it
    result = run_cli("--reference", prepared, "--predictions", folder, "--task", "multiclass",
                     "--rules", tmp_path / "eval.json", "--out", tmp_path / "scored" / "eval.json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "scored" / "eval.json").read_bytes() == (tmp_path / "eval.json").read_bytes()
    assert f"red: Dice against the core {summary.by_class['red']['core']['micro']['f1']:.3f}" in result.stdout
    assert f"wrote {tmp_path / 'scored' / 'eval.json'}" in result.stdout


def test_command_with_a_threshold_scores_every_class_at_it(prepared, tmp_path):
    task = TASKS["binary"]
    probabilities = noisy(prepared, task)
    folder = write(tmp_path / "predictions", prepared, probabilities)
    result = run_cli("--reference", prepared, "--predictions", folder, "--task", "binary", "--threshold", 0.7,
                     "--variant", "mine", "--out", tmp_path / "eval.json")
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "eval.json").read_text())
    expected, _, _ = score(reference(prepared, task), probabilities, task,
                           Scoring.fixed({"hemorrhages": 0.7}, "argument"), "mine", CORE_THRESHOLD)
    assert written["variant"] == "mine" and written["threshold_source"] == "argument"
    assert written == json.loads(json.dumps(expected.as_written()).replace("NaN", "null"))


@pytest.mark.parametrize("problem", ["missing file", "wrong shape", "unknown task"])
def test_command_errors_are_one_line(prepared, tmp_path, problem):
    folder = write(tmp_path / "predictions", prepared, noisy(prepared, TASKS["multiclass"]))
    task, says = "multiclass", ""
    if problem == "missing file":
        prediction_path(folder, 5).unlink()
        says = f"error: {prediction_path(folder, 5)}: missing"
    elif problem == "wrong shape":
        np.save(prediction_path(folder, 6), np.zeros((16, 16, 3), np.float32))
        says = f"error: {prediction_path(folder, 6)}: float32 [16, 16, 3], expected float probabilities [32, 32, 3]"
    else:
        task, says = "lesions", f"error: --task lesions: not in {prepared.parent / 'manifest.json'}; known tasks: "
    result = run_cli("--reference", prepared, "--predictions", folder, "--task", task,
                     "--out", tmp_path / "eval.json")
    assert result.returncode == 1
    assert result.stderr.startswith(says) and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "eval.json").exists()


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """Four realistic synthetic images with the simulator's truth, prepared at 64 px: train 1-2, test 3-4."""
    root = tmp_path_factory.mktemp("truth")
    generate_and_prepare(root, num_images=4, size=(300, 230), style="realistic", image_size=64, train_ids="1-2",
                         tasks=[TASKS["binary"]])
    return root / "prepared" / "test"


def test_with_the_simulated_truth_each_class_is_also_scored_against_the_drawn_lesions(realistic, tmp_path):
    task = TASKS["binary"]
    drawn = json.loads((realistic / "truth.json").read_text())
    haemorrhages = sum(lesion["type"] == "hemorrhages" for lesions in drawn["images"].values() for lesion in lesions)
    everywhere = np.ones((2, 64, 64, 1), np.float32)  # one component over the whole field of view
    folder = write_predictions(tmp_path / "all", [3, 4], everywhere) or tmp_path / "all"
    scoring = Scoring.fixed({"hemorrhages": 0.5}, "params", pr_thresholds=11)
    summary, curves, _ = score_folder(realistic, folder, Task("binary", {"hemorrhages": ()}), scoring, "all")
    json.dumps(summary.as_written(), allow_nan=True)  # what eval.json gets: plain Python numbers only
    at_truth = summary.by_class["hemorrhages"]["truth"]
    assert at_truth["lesion"]["n_reference_lesions"] == haemorrhages > 0
    # One component per image, painted over the whole field of view, finds one drawn lesion per image.
    with_lesions = sum(any(lesion["type"] == "hemorrhages" for lesion in lesions) for lesions in drawn["images"].values())
    assert at_truth["lesion"]["n_found_lesions"] == with_lesions and at_truth["lesion"]["n_fp_components"] == 0
    assert set(at_truth["froc"]["by_kind"]) <= {"dot_blot_haemorrhage", "flame_haemorrhage"}
    assert sum(group["n_lesions"] for group in at_truth["froc"]["by_annotators"].values()) == haemorrhages
    assert curves.froc_truth["hemorrhages"][0]["predicted_fov_share"] == 1.0
    nothing = write_predictions(tmp_path / "none", [3, 4], np.zeros_like(everywhere)) or tmp_path / "none"
    summary, _, _ = score_folder(realistic, nothing, task, scoring, "none")
    assert summary.by_class["hemorrhages"]["truth"]["froc"]["cpm"] == 0.0
    assert summary.by_class["hemorrhages"]["truth"]["lesion"]["lesion_sensitivity"] == 0.0
    summary.write(tmp_path / "eval.json")  # with the truth's figures and the nulls of scores never defined
    assert "null" in (tmp_path / "eval.json").read_text()
    assert_round_trip(tmp_path / "eval.json", task)


def test_without_a_truth_file_nothing_is_scored_against_it(prepared, tmp_path):
    task = TASKS["binary"]
    folder = write(tmp_path / "p", prepared, noisy(prepared, task))
    summary, curves, _ = score_folder(prepared, folder, task,
                                      Scoring.fixed({"hemorrhages": 0.5}, "params", pr_thresholds=11), "p")
    assert "truth" not in summary.by_class["hemorrhages"] and curves.froc_truth == {}
