import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from helpers import one_line_error
from retinaseg import predict
from retinaseg.model import build_unet

MULTICLASS = ["background", "red", "bright"]


def save_model(folder, classes, *, run_json=True):
    """A tiny untrained U-Net saved as the pipeline does: model.keras beside run.json."""
    folder.mkdir(parents=True)
    model = build_unet(image_size=32, num_classes=len(classes), depth=2, base_filters=4)
    model.save(folder / "model.keras")
    if run_json:
        run = {"task": "multiclass" if len(classes) > 1 else "binary", "classes": classes, "image_size": 32,
               "crop_to_fundus": True}
        (folder / "run.json").write_text(json.dumps(run))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_model(root / "multiclass", MULTICLASS)
    save_model(root / "binary", ["hemorrhages"])
    return root


@pytest.fixture
def fundus(tmp_path):
    """A black 90x70 canvas with an orange disc; returns the path and its field of view."""
    image = Image.new("RGB", (90, 70))
    ImageDraw.Draw(image).ellipse((20, 8, 70, 60), fill=(200, 90, 40))
    path = tmp_path / "eye.png"
    image.save(path)
    return path, np.asarray(image).max(axis=-1) > 0


def inside_and_outside(lit):
    """Pixels safely inside the field of view and safely outside it (resizing moves its edge by a pixel)."""
    return ndimage.binary_erosion(lit, iterations=2), ~ndimage.binary_dilation(lit, iterations=2)


def test_multiclass_planes_are_one_hot_in_the_field_of_view_and_zero_outside(models, fundus, tmp_path, capsys):
    path, lit = fundus
    predict.main([str(path), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out")])
    planes = np.load(tmp_path / "out" / "eye.npy")
    inside, outside = inside_and_outside(lit)
    assert planes.shape == (70, 90, 3) and planes.dtype == np.uint8
    assert set(np.unique(planes)) <= {0, 1}
    assert (planes[inside].sum(axis=-1) == 1).all()
    assert not planes[outside].any()
    assert "eye.png: 90x70 -> " in capsys.readouterr().out


def test_overlay_is_the_image_with_lesions_painted_above_a_legend(models, fundus, tmp_path):
    path, _ = fundus
    predict.main([str(path), "--model", str(models / "multiclass" / "model.keras"), "--out", str(tmp_path / "out")])
    planes = np.load(tmp_path / "out" / "eye.npy")
    with Image.open(tmp_path / "out" / "eye_overlay.png") as picture:
        overlay = np.asarray(picture.convert("RGB"))
    assert overlay.shape == (70 + predict.legend_height(70, 2), 90, 3)
    original = np.asarray(Image.open(path))
    lesion = planes[..., 1:].any(axis=-1)
    assert (overlay[:70][~lesion] == original[~lesion]).all()
    assert (overlay[:70][lesion] != original[lesion]).any(axis=-1).all()


@pytest.mark.parametrize("threshold, inside", [("0", 1), ("1", 0)])
def test_binary_model_thresholds_its_single_plane(models, fundus, tmp_path, threshold, inside):
    path, lit = fundus
    predict.main([str(path), "--model", str(models / "binary"), "--out", str(tmp_path), "--threshold", threshold])
    planes = np.load(tmp_path / "eye.npy")
    fov, outside = inside_and_outside(lit)
    assert planes.shape == (70, 90, 1)
    assert (planes[fov] == inside).all() and not planes[outside].any()


def test_eval_json_gives_per_class_thresholds(models, fundus, tmp_path):
    rules = {"thresholds": {"red": 0.0, "bright": 1.01}, "min_component_px": 1, "drop_on_optic_disc": False}
    (tmp_path / "eval.json").write_text(json.dumps(rules))
    predict.main([str(fundus[0]), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out"),
                  "--eval", str(tmp_path / "eval.json")])
    planes = np.load(tmp_path / "out" / "eye.npy")
    inside, _ = inside_and_outside(fundus[1])
    assert planes[inside, 1].all() and not planes[..., 2].any()


def test_eval_json_of_other_classes_is_one_line_error(models, fundus, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"thresholds": {"hemorrhages": 0.5}}))
    one_line_error(lambda: predict.main([str(fundus[0]), "--model", str(models / "multiclass"),
                                         "--out", str(tmp_path / "out"), "--eval", str(tmp_path / "eval.json")]),
                   "eval.json", "red, bright")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_any_image_mode_is_read_as_rgb_and_no_crop_covers_the_whole_image(models, tmp_path, mode):
    image = Image.new("L", (64, 48))
    ImageDraw.Draw(image).ellipse((10, 4, 50, 44), fill=180)
    image.convert(mode).save(tmp_path / "gray.png")
    predict.main([str(tmp_path / "gray.png"), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out"),
                  "--no-crop"])
    planes = np.load(tmp_path / "out" / "gray.npy")
    inside, outside = inside_and_outside(np.asarray(image) > 0)
    assert planes.shape == (48, 64, 3) and (planes[inside].sum(axis=-1) == 1).all() and not planes[outside].any()


def test_without_run_json_classes_and_size_come_from_the_model(fundus, tmp_path, capsys):
    save_model(tmp_path / "bare", MULTICLASS, run_json=False)
    predict.main([str(fundus[0]), "--model", str(tmp_path / "bare"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "note: no run.json found" in out and "class1 " in out and "class3 " in out
    assert np.load(tmp_path / "out" / "eye.npy").shape == (70, 90, 3)


def test_mlflow_runs_uri_loads_the_logged_model_and_its_run_json(fundus, tmp_path, monkeypatch, capsys):
    import mlflow

    from retinaseg import tracking

    store = tmp_path / "project"
    store.mkdir()
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    model = save_model(tmp_path / "local", ["hemorrhages"])
    with mlflow.start_run(experiment_id=tracking.setup()) as run:
        mlflow.tensorflow.log_model(model, name="model", pip_requirements=[])
        mlflow.log_artifact(str(tmp_path / "local" / "run.json"))
    predict.main([str(fundus[0]), "--model", f"runs:/{run.info.run_id}/model", "--out", str(tmp_path / "out")])
    assert "classes hemorrhages" in capsys.readouterr().out
    assert np.load(tmp_path / "out" / "eye.npy").shape == (70, 90, 1)
    assert sorted(p.name for p in store.iterdir()) == ["mlflow.db", "mlruns"]


def test_mlflow_uri_without_a_store_says_where_it_looked(fundus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_line_error(lambda: predict.main([str(fundus[0]), "--model", "runs:/abc/model", "--out", "out"]),
                   "runs:/abc/model", f"{tmp_path}/mlflow.db", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "mlflow.db").exists()


def test_corrupt_image_fails_before_any_output(models, fundus, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    one_line_error(lambda: predict.main([str(fundus[0]), str(bad), "--model", str(models / "multiclass"),
                                         "--out", str(tmp_path / "out")]), str(bad), "unreadable")
    assert not (tmp_path / "out").exists()


def test_missing_image_and_clashing_names_are_named(fundus, tmp_path):
    missing = tmp_path / "nope.png"
    one_line_error(lambda: predict.check_inputs([missing]), str(missing), "no such image")
    twin = tmp_path / "other" / "eye.png"
    twin.parent.mkdir()
    twin.write_bytes(fundus[0].read_bytes())
    one_line_error(lambda: predict.check_inputs([fundus[0], twin]), "eye.npy", "rename")


def test_bad_model_paths_say_what_to_pass(fundus, tmp_path):
    missing = tmp_path / "models" / "nope"
    one_line_error(lambda: predict.load_predictor(str(missing)), str(missing), "models/<variant>", "runs:/")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a model")
    one_line_error(lambda: predict.load_predictor(str(junk)), str(junk), "not a readable Keras model")


def test_command_line_prints_one_error_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = subprocess.run([sys.executable, "-m", "retinaseg.predict", str(bad), "--model", "m", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"error: {bad}: unreadable" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
