"""``python -m benchmarks --tiny`` runs every section and writes a complete report.

Tiny sizes say nothing about speed, so no time target is asserted; only that every
figure is there and numeric.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import generate_and_prepare

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["peak", "train_step", "input_stall", "determinism", "distribute", "augmentation", "prepare", "inference",
            "roofline", "dvc_noop"]


def run_benchmarks(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def numbers(value) -> list[float]:
    """Every numeric leaf of a JSON value (booleans are not figures)."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    return run_benchmarks(out), out


def test_tiny_run_succeeds_with_progress_and_table(tiny):
    done, out = tiny
    assert done.returncode == 0, done.stderr[-3000:]
    for name in SECTIONS:
        assert f"[{name}] running" in done.stdout and f"[{name}] done in" in done.stdout
    assert "targets:" in done.stdout and f"wrote {out}" in done.stdout


def test_report_has_every_section_with_numeric_figures(tiny):
    report = json.loads(tiny[1].read_text())
    assert list(report["sections"]) == SECTIONS
    for name, result in report["sections"].items():
        assert "error" not in result, (name, result["error"])
        assert result["load"]["seconds"] >= 0
        figures = numbers({key: value for key, value in result.items() if key != "load"})
        assert all(math.isfinite(figure) for figure in figures), name
        assert figures or result.get("skipped"), name
    sections = report["sections"]
    assert sections["dvc_noop"] == {"skipped": "--tiny", "load": sections["dvc_noop"]["load"]}
    assert sections["peak"]["float32"]["gflops"]["median"] > 0
    for net in sections["train_step"]["nets"].values():
        assert net["forward_flops"]["per_image"] > 0
        for variant in net["variants"].values():
            assert variant.get("skipped") or variant["images_per_second"]["median"] > 0
    assert sections["input_stall"]["ratio"] > 0
    assert sections["augmentation"]["speedup"] > 0
    assert sections["prepare"]["peak_rss_mib"]["bound"] > 0
    assert sections["inference"]["full_resolution"]["images_per_second"]["median"] > 0


def test_every_repetition_is_recorded_with_its_spread(tiny):
    stats = json.loads(tiny[1].read_text())["sections"]["peak"]["float32"]["seconds"]
    assert stats["reps"] == len(stats["values"]) >= 1
    assert stats["min"] <= stats["median"] <= stats["max"]


def test_targets_sit_beside_their_figures_with_a_verdict(tiny):
    report = json.loads(tiny[1].read_text())
    names = [goal["name"] for goal in report["targets"]]
    assert len(names) == 5 and any("input stall" in name for name in names)
    assert any("op determinism cost" in name for name in names)
    for goal in report["targets"]:
        assert isinstance(goal["pass"], bool) and goal["limit"][:2] in ("<=", ">=")
    assert isinstance(report["contaminated"], bool)


def test_roofline_bounds_each_workload_by_the_peak_and_bandwidth_of_the_same_run(tiny):
    sections = json.loads(tiny[1].read_text())["sections"]
    result, peaks = sections["roofline"], sections["peak"]
    step, memory = result["train_step"], result["bandwidth"]
    assert result["peak"]["gflops"] == peaks[result["peak"]["precision"]]["gflops"]["median"]
    for name in ("float32", "bfloat16"):
        if "gflops" in peaks[name]:
            assert step[f"fraction_of_{name}_peak"] == pytest.approx(
                step["gflops"]["median"] / peaks[name]["gflops"]["median"])
    assert step["flops_per_image"] == 3 * step["forward_flops_per_image"] > 0
    # Odd repetitions: the median rate is the rate of the median time (the listed values are rounded).
    images = step["images_per_second"]["median"]
    assert images == pytest.approx(step["batch"] / step["step_seconds"]["median"])
    assert step["gflops"]["median"] == pytest.approx(images * step["flops_per_image"] / 1e9)
    assert memory["gbs"]["median"] == pytest.approx(3 * 4 * memory["elements"] / memory["seconds"]["median"] / 1e9), \
        "3 float32 arrays moved"
    inference = result["inference"]
    for workload in (step, inference["training_size"], inference["full_resolution"]):
        line, moved = workload["roofline"], workload["bytes"]
        peak, bandwidth = result["peak"]["gflops"], memory["gbs"]["median"]
        assert line["compute_bound_images_per_second"] == pytest.approx(peak * 1e9 / workload["flops_per_image"])
        assert line["memory_bound_images_per_second"] == pytest.approx(bandwidth * 1e9 / moved["per_image"])
        assert line["bound_images_per_second"] == pytest.approx(
            min(peak, bandwidth * line["arithmetic_intensity"]) * 1e9 / workload["flops_per_image"])
        assert line["binds"] == ("compute" if peak <= bandwidth * line["arithmetic_intensity"] else "memory")
        assert line["images_per_second"] == workload["images_per_second"]["median"]
        assert line["fraction_of_bound"] == pytest.approx(line["images_per_second"] / line["bound_images_per_second"])
        activations = moved["activations"]
        assert moved["per_step"] == (moved["batch"] * activations["per_image"] + moved["parameters_per_step"]["read"]
                                     + moved["parameters_per_step"]["written"])
        assert sum(activations["by_layer_kind"].values()) == activations["per_image"]
    assert step["bytes"]["activations"]["backward_read"] > 0
    assert inference["training_size"]["bytes"]["activations"]["backward_read"] == 0, "prediction has no backward pass"
    allocated = step["allocated"]
    assert allocated["allocated_over_analytic_written"] == pytest.approx(
        allocated["bytes_per_step"] / allocated["analytic_written_bytes_per_step"])
    assert 0 < step["kernel_time"]["conv_share"] <= 1


def test_roofline_splits_the_pipeline_epoch_into_parts_that_add_up(tiny):
    result = json.loads(tiny[1].read_text())["sections"]["roofline"]
    epoch = result["pipeline_epoch"]
    assert epoch["rows"] == epoch["steps_per_epoch"] * epoch["batch"] > 0
    assert epoch["validation_images"] >= 1 and len(epoch["epochs_seconds"]) == epoch["epochs"] >= 2
    steady = epoch["epochs_seconds"][1:]
    assert epoch["images_per_second"]["values"] == [pytest.approx(epoch["rows"] / part["seconds"], rel=1e-4)
                                                    for part in steady]
    for part in epoch["epochs_seconds"]:
        assert part["seconds"] == pytest.approx(sum(value for key, value in part.items() if key != "seconds"))
        assert part["steps"] > 0 and part["validation"] > 0 and part["epoch_end_callbacks"] > 0
    assert sum(epoch["overheads_seconds_per_epoch"].values()) == pytest.approx(epoch["epoch_seconds"]["seconds"])
    assert epoch["fraction_of_bare_step"] == pytest.approx(
        epoch["images_per_second"]["median"] / result["train_step"]["images_per_second"]["median"])
    assert epoch["step_in_fit_over_bare"] == pytest.approx(
        epoch["step_in_fit_seconds"]["median"] / epoch["bare_step_seconds"]["median"])
    assert epoch["setup_seconds"] > 0 and epoch["after_fit_seconds"] > 0


def test_traffic_counts_every_pass_of_each_layer_at_its_dtype():
    import keras

    from benchmarks import traffic

    inputs = keras.Input((4, 4, 3))
    hidden = keras.layers.Conv2D(2, 3, padding="same", name="first")(inputs)
    hidden = keras.layers.Activation("relu")(hidden)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")(hidden)
    model = keras.Model(inputs, outputs)
    x, h, y = 16 * 3 * 4, 16 * 2 * 4, 16 * 1 * 4  # float32 bytes of one image's input, hidden planes, output
    prediction = traffic.activation_bytes(model, training=False)
    assert (prediction["forward_read"], prediction["forward_write"]) == (x + h + h, h + h + y)
    assert prediction["backward_read"] == prediction["backward_write"] == 0
    step = traffic.activation_bytes(model, training=True)
    assert (step["forward_read"], step["forward_write"]) == (x + h + h + 2 * y, h + h + y), "the loss reads y, target"
    # Loss: y and target; head: sigmoid (y, dy), weight gradient (dy, h), input gradient (dy); relu: h, dh;
    # first conv: weight gradient only (dh, x), as no weight comes before its input.
    assert step["backward_read"] == 2 * y + 2 * y + (y + h) + y + 2 * h + (h + x)
    assert step["backward_write"] == y + y + h + h
    assert step["by_layer_kind"]["Activation"] == 2 * h + 3 * h
    read, written = traffic.parameter_bytes(model, training=True)
    parameters = (3 * 3 * 3 * 2 + 2) + (2 + 1)
    assert (read, written) == (24 * parameters, 16 * parameters)


def test_only_runs_the_chosen_sections(tmp_path):
    out = tmp_path / "bench.json"
    done = run_benchmarks(out, "--only", "augmentation", "dvc_noop")
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(json.loads(out.read_text())["sections"]) == ["augmentation", "dvc_noop"]


def test_tracking_server_load_runs_a_real_server_and_reports_every_level(tmp_path):
    out = tmp_path / "server.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.tracking_server", "--clients", "1", "2",
                           "--seconds", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    levels = json.loads(out.read_text())["levels"]
    assert [row["clients"] for row in levels] == [1, 2]
    for row in levels:
        assert row["requests"] > 0 and row["errors"] == 0 and 0 < row["p50_ms"] <= row["p95_ms"]


def test_peak_split_divides_big_components_at_peaks_that_rise_enough():
    from benchmarks.peak_split import split_at_peaks
    from retinaseg.evaluation import froc

    plane = np.zeros((40, 40), dtype=np.float32)
    plane[5:15, 5:35] = 0.6  # one 300-px component ...
    plane[9:11, 9:11] = plane[9:11, 29:31] = 0.9  # ... with two peaks well above the threshold
    plane[25:35, 5:35] = 0.6  # one as big, flat
    plane[30, 37:39] = plane[31, 37:39] = 0.9  # a 4-px speck with a peak
    fov = np.ones_like(plane, dtype=bool)
    labels, keep = froc.cleaned_components(plane, 0.5, fov, 3, None)
    assert keep.sum() == 3
    split, kept = split_at_peaks(min_area=100, radius=5, rise=0.15)(plane, 0.5, fov, 3, None)
    assert kept.sum() == 4, "the peaked component becomes two, the flat one and the speck stay whole"
    assert np.array_equal(split > 0, labels > 0), "no pixel is added or lost"
    assert split[10, 10] != split[10, 30] and len(np.unique(split[25:35, 5:35])) == 1
    assert split_at_peaks(min_area=100, radius=5, rise=0.45)(plane, 0.5, fov, 3, None)[1].sum() == 3, "peaks below 0.95 do not split"


@pytest.fixture(scope="module")
def realistic_test_set(tmp_path_factory):
    """Four realistic synthetic images with the simulator's truth, prepared at 64 px: test images 3-4."""
    from retinaseg.core.tasks import Task

    root = tmp_path_factory.mktemp("ceiling")
    generate_and_prepare(root, num_images=4, size=(300, 230), style="realistic", image_size=64, train_ids="1-2",
                         tasks=[Task("binary", {"hemorrhages": ("hemorrhages",)})])
    return root / "prepared" / "test"


def test_label_ceiling_scores_the_labels_as_predictions(realistic_test_set):
    from benchmarks.label_ceiling import ceilings
    from retinaseg.evaluation.score import Scoring

    uncleaned = Scoring.fixed({"hemorrhages": 0.5}, pr_thresholds=11)
    results = ceilings(realistic_test_set, "binary", uncleaned)
    assert set(results) == {"annotator confidence", "any annotator's mark (confidence > 0)", "core",
                            "drawn lesions by visibility", "drawn lesions by size", "drawn lesions by annotators"}
    core_as_prediction = results["core"]["hemorrhages"]
    assert core_as_prediction["core"]["cpm"] == core_as_prediction["outside_marks"]["cpm"] == 1.0, \
        "the core, uncleaned, finds every core lesion and nothing else"
    # Thresholded near the core threshold, the resized confidence is the core but for resampling at its edges.
    assert results["annotator confidence"]["hemorrhages"]["core"]["cpm"] > 0.9
    for label in results.values():
        assert 0.0 <= label["hemorrhages"]["truth"]["cpm"] <= 1.0
    assert results["any annotator's mark (confidence > 0)"]["hemorrhages"]["core"]["cpm"] < 1.0, \
        "marks beyond the core are false alarms"
    perfect = results["drawn lesions by size"]["hemorrhages"]
    for label in ("annotator confidence", "core"):
        assert perfect["truth"]["sensitivity_at_fp"]["8"] > results[label]["hemorrhages"]["truth"]["sensitivity_at_fp"]["8"], \
            f"every drawn lesion is predicted, more than {label} covers"
    assert perfect["truth"]["cpm"] > results["core"]["hemorrhages"]["truth"]["cpm"], "it finds what the core misses"


def test_perfect_detector_ranks_drawn_lesions_and_keeps_the_higher_where_they_overlap():
    from benchmarks.label_ceiling import perfect_detector

    simulated = {"image_size": 16, "crop_box": [0, 0, 16, 16], "images": {"1": [
        {"type": "hemorrhages", "x": 4.5, "y": 4.5, "major": 2.0, "minor": 2.0, "angle": 0.0, "annotators": 1},
        {"type": "hemorrhages", "x": 6.5, "y": 4.5, "major": 3.0, "minor": 3.0, "angle": 0.0, "annotators": 4},
        {"type": "hardexudates", "x": 12.5, "y": 12.5, "major": 2.0, "minor": 2.0, "angle": 0.0, "annotators": 4},
    ]}}
    plane = perfect_detector(simulated, [1], ["hemorrhages"], lambda lesion: lesion["major"])[0, ..., 0]
    assert plane.shape == (16, 16)
    assert plane[4, 4] == pytest.approx(0.99), "the overlap keeps the bigger lesion's score"
    assert plane[4, 2] == pytest.approx(0.05), "the smaller lesion alone gets the lowest score"
    assert plane[12, 12] == 0.0, "another class's lesion is not predicted"


def test_label_ceiling_gives_a_softmax_task_a_background_plane_and_shares_overlaps():
    from benchmarks.label_ceiling import as_probabilities

    planes = np.array([[[[1.0, 1.0], [0.25, 0.0]]]], dtype=np.float32)  # one image, 1x2 pixels, two classes
    probabilities = as_probabilities(planes, multiclass=True)
    assert probabilities.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probabilities[0, 0, 0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(probabilities[0, 0, 1], [0.75, 0.25, 0.0])
    assert as_probabilities(planes, multiclass=False) is planes
