"""predict: class planes, detection tables and overlays of new images, from a model whose predictions are known.

The model is a 1x1 convolution on the pixels (after the U-Net's own ``scale_to_unit``) with
set weights: "bright" where green is high, "red" where blue is high. So a bright and a "red"
spot painted on the test fundus must come back exactly where they were painted.
"""

import errno
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import eval_record, one_line_error
from PIL import Image, ImageDraw
from scipy import ndimage

from retinaseg.core.tasks import Task
from retinaseg.evaluation import predict
from retinaseg.model.unet import scale_to_unit

MULTICLASS = ["background", "red", "bright"]
FUNDUS, BRIGHT, RED = (200, 90, 40), (255, 240, 50), (150, 30, 200)


def colour_model(planes: int) -> keras.Model:
    """Raw pixels -> probabilities: the last plane fires on green > 0.65, plane 1 (of three) on blue > 0.45.

    The orange fundus and the black margin stay background (probability > 0.99).
    """
    inputs = keras.Input((32, 32, 3), name="image")
    outputs = keras.layers.Conv2D(planes, 1, activation="softmax" if planes > 1 else "sigmoid",
                                  name="probabilities")(scale_to_unit(inputs))
    model = keras.Model(inputs, outputs)
    kernel, bias = np.zeros((1, 1, 3, planes), np.float32), np.zeros(planes, np.float32)
    kernel[0, 0, 1, -1], bias[-1] = 20.0, -13.0
    if planes > 1:
        kernel[0, 0, 2, 1], bias[1] = 20.0, -9.0
    model.get_layer("probabilities").set_weights([kernel, bias])
    return model


def save_model(folder, classes, *, run_json=True, crop=True):
    """The colour model saved as the pipeline saves a trained one: model.keras beside run.json."""
    folder.mkdir(parents=True)
    colour_model(len(classes)).save(folder / "model.keras")
    if run_json:
        run = {"task": "multiclass" if len(classes) > 1 else "binary", "classes": classes, "image_size": 32,
               "crop_to_fundus": crop}
        (folder / "run.json").write_text(json.dumps(run))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_model(root / "multiclass", MULTICLASS)
    save_model(root / "binary", ["hemorrhages"])
    return root


def painted(size, shapes):
    """An RGB image of ``size`` with ellipses drawn in order, and the mask of each."""
    image = Image.new("RGB", size)
    masks = []
    for box, colour in shapes:
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        mask = Image.new("1", size)
        ImageDraw.Draw(mask).ellipse(box, fill=1)
        masks.append(np.asarray(mask))
    return image, masks


@pytest.fixture
def fundus(tmp_path):
    """A black 90x70 canvas with an orange fundus holding a bright and a red spot.

    Returns the path and the masks of the field of view, the bright spot and the red spot.
    """
    image, (lit, bright, red) = painted((90, 70), [((20, 8, 70, 60), FUNDUS), ((28, 22, 42, 36), BRIGHT),
                                                   ((46, 30, 60, 44), RED)])
    path = tmp_path / "eye.png"
    image.save(path)
    return path, lit, bright, red


def inside_and_outside(mask, margin=3):
    """Pixels safely inside a region and safely outside it: the 32-px model input moves an edge by 1.6 px."""
    return ndimage.binary_erosion(mask, iterations=margin), ~ndimage.binary_dilation(mask, iterations=margin)


def assert_plane_is(plane, region):
    inside, outside = inside_and_outside(region)
    assert inside.any() and plane[inside].all() and not plane[outside].any()


def test_multiclass_planes_find_each_spot_and_are_one_hot_in_the_field_of_view(models, fundus, tmp_path, capsys):
    path, lit, bright, red = fundus
    predict.main([str(path), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out")])
    planes = np.load(tmp_path / "out" / "eye.npy")
    assert planes.shape == (70, 90, 3) and planes.dtype == np.uint8
    assert set(np.unique(planes)) == {0, 1}
    assert_plane_is(planes[..., 2], bright)
    assert_plane_is(planes[..., 1], red)
    inside, outside = inside_and_outside(lit)
    assert (planes[inside].sum(axis=-1) == 1).all()
    assert not planes[outside].any()
    assert_plane_is(planes[..., 0], lit & ~bright & ~red)
    counts = planes.sum(axis=(0, 1))
    out = capsys.readouterr().out
    assert "classes background, red, bright, 32 px, cropped to the fundus" in out
    written = ", ".join(str(tmp_path / "out" / name) for name in ("eye.npy", "eye_overlay.png", "eye_detections.json"))
    assert f"eye.png: 90x70 -> {written}; background {counts[0]}, red {counts[1]}, bright {counts[2]} px" in out


def test_overlay_outlines_each_component_in_its_class_colour_and_leaves_the_lesion_visible(models, fundus, tmp_path):
    path, _, bright, red = fundus
    predict.main([str(path), "--model", str(models / "multiclass" / "model.keras"), "--out", str(tmp_path / "out")])
    planes = np.load(tmp_path / "out" / "eye.npy").astype(bool)
    with Image.open(tmp_path / "out" / "eye_overlay.png") as picture:
        overlay = np.asarray(picture.convert("RGB"))
    assert overlay.shape == (70 + predict.legend_height(70, 2), 90, 3)
    original = np.asarray(Image.open(path))
    lesion = planes[..., 1:].any(axis=-1)
    assert (overlay[:70][~lesion] == original[~lesion]).all()
    for plane, spot, colour in ((1, red, predict.PALETTE[0]), (2, bright, predict.PALETTE[1])):
        where = planes[..., plane]
        assert where[inside_and_outside(spot)[0]].all()
        interior = ndimage.binary_erosion(where)  # a 90x70 image gets a 1-px outline
        boundary = where & ~interior
        assert interior.sum() > 50 and boundary.sum() > 20
        assert (overlay[:70][interior] == original[interior]).all()  # not filled: the lesion shows
        assert (overlay[:70][boundary] == colour).all()
        assert (overlay[70:] == colour).all(axis=-1).sum() > 20  # its legend swatch


def test_outline_is_two_pixels_inside_the_component_at_full_size():
    image = np.full((1152, 1500, 3), 90, np.uint8)
    planes = np.zeros((1152, 1500, 3), np.uint8)
    planes[..., 0] = 1
    planes[400:600, 500:700] = [0, 1, 0]
    overlay = np.asarray(predict.class_overlay(image, planes, Task.from_planes("multiclass", MULTICLASS)))[:1152]
    coloured = (overlay == predict.PALETTE[0]).all(axis=-1)
    assert np.flatnonzero(coloured[500]).tolist() == [500, 501, 698, 699]
    assert np.flatnonzero(coloured[:, 600]).tolist() == [400, 401, 598, 599]
    assert coloured.sum() == 200 * 200 - 196 * 196 and (overlay[~coloured] == 90).all()


@pytest.fixture
def three_spots(tmp_path):
    """The fundus with a small strong red spot, a large weaker one (blue 150) and a bright spot; their masks."""
    image, (_, strong, weak, bright) = painted((90, 70), [((20, 8, 70, 60), FUNDUS), ((50, 16, 58, 24), RED),
                                                          ((28, 34, 46, 52), (150, 30, 150)), ((28, 14, 38, 24), BRIGHT)])
    path = tmp_path / "spots.png"
    image.save(path)
    return path, strong, weak, bright


def test_detections_are_the_components_of_the_written_planes_in_image_coordinates(models, three_spots, tmp_path):
    path, strong, weak, bright = three_spots
    eval_json = write_eval_json(tmp_path / "eval.json", {"red": 0.5, "bright": 0.6})
    predict.main([str(path), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out"),
                  "--eval", str(eval_json)])  # cropped to the fundus: model pixels are not image pixels
    planes = np.load(tmp_path / "out" / "spots.npy")
    table = json.loads((tmp_path / "out" / "spots_detections.json").read_text())
    assert {key: table[key] for key in ("image", "width", "height", "classes", "thresholds")} == {
        "image": "spots.png", "width": 90, "height": 70, "classes": ["red", "bright"],
        "thresholds": {"red": 0.5, "bright": 0.6}}
    rows = table["detections"]
    assert [row["class"] for row in rows] == ["red", "red", "bright"]
    for plane, name in ((1, "red"), (2, "bright")):
        labels, _ = ndimage.label(planes[..., plane], structure=np.ones((3, 3)))
        expected = sorted(([box[1].start, box[0].start, box[1].stop, box[0].stop], int(area))
                          for box, area in zip(ndimage.find_objects(labels), np.bincount(labels.ravel())[1:]))
        assert sorted((row["bbox"], row["area_px"]) for row in rows if row["class"] == name) == expected
    for row in rows:
        assert table["thresholds"][row["class"]] <= row["mean_probability"] <= row["peak_probability"] <= 1
    # By falling peak, not by size: the small strong spot before the large weak one.
    assert rows[0]["peak_probability"] > rows[1]["peak_probability"] and rows[0]["area_px"] < rows[1]["area_px"]
    for row, spot in zip(rows, (strong, weak, bright)):
        centre_y, centre_x = ndimage.center_of_mass(spot)
        np.testing.assert_allclose(row["centroid"], [centre_x, centre_y], atol=1.5)
        box_rows, box_cols = ndimage.find_objects(spot.astype(int))[0]
        np.testing.assert_allclose(row["bbox"], [box_cols.start, box_rows.start, box_cols.stop, box_rows.stop], atol=3)


def test_a_failed_write_leaves_every_earlier_output_of_the_image(models, fundus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    predict.main([str(fundus[0]), "--model", str(models / "multiclass"), "--out", str(out)])
    before = {file.name: file.read_bytes() for file in out.iterdir()}
    assert sorted(before) == ["eye.npy", "eye_detections.json", "eye_overlay.png"]

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict, "class_overlay", disk_full)  # after eye.npy, before the table
    one_line_error(lambda: predict.main([str(fundus[0]), "--model", str(models / "multiclass"), "--out", str(out),
                                         "--threshold", "1"]), "eye_overlay.png", "no space left")
    assert {file.name: file.read_bytes() for file in out.iterdir()} == before


def test_save_probabilities_writes_the_model_input_and_its_answer(models, fundus, tmp_path, capsys):
    from retinaseg.prepare.fundus import crop_resize, image_fundus_box

    path = fundus[0]
    out = tmp_path / "out"
    predict.main([str(path), "--model", str(models / "multiclass"), "--out", str(out), "--save-probabilities"])
    model_input, probabilities = np.load(out / "eye_input.npy"), np.load(out / "eye_probabilities.npy")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert model_input.dtype == np.uint8 and model_input.shape == (32, 32, 3)
    assert (model_input == crop_resize(image, image_fundus_box(image), 32)).all()
    assert probabilities.dtype == np.float32 and probabilities.shape == (32, 32, 3)
    expected = colour_model(3).predict(model_input[None].astype(np.float32), verbose=0)[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert probabilities[..., 2].max() > 0.99 and probabilities[..., 1].max() > 0.99  # both spots
    assert f"{out / 'eye_input.npy'}, {out / 'eye_probabilities.npy'}" in capsys.readouterr().out


def test_save_probabilities_names_that_clash_are_found_before_any_output(fundus, tmp_path):
    other = tmp_path / "other" / "eye_input.png"
    other.parent.mkdir()
    other.write_bytes(fundus[0].read_bytes())
    predict.check_inputs([fundus[0], other])  # eye.npy and eye_input.npy: no clash without the option
    one_line_error(lambda: predict.check_inputs([fundus[0], other], save_probabilities=True),
                   str(other), "eye_input.npy", "rename")


@pytest.mark.parametrize("threshold, expected", [("0", "fov"), ("0.5", "bright"), ("1", "none")])
def test_binary_model_thresholds_its_single_plane(models, fundus, tmp_path, threshold, expected):
    path, lit, bright, _ = fundus
    predict.main([str(path), "--model", str(models / "binary"), "--out", str(tmp_path), "--threshold", threshold])
    planes = np.load(tmp_path / "eye.npy")
    assert planes.shape == (70, 90, 1)
    table = json.loads((tmp_path / "eye_detections.json").read_text())
    assert table["classes"] == ["hemorrhages"] and table["thresholds"] == {"hemorrhages": float(threshold)}
    if expected == "none":
        assert not planes.any() and table["detections"] == []
    else:
        assert_plane_is(planes[..., 0], lit if expected == "fov" else bright)
        assert [row["area_px"] for row in table["detections"]] == [planes.sum()]


def write_eval_json(path, thresholds, min_component_px=1, drop_on_optic_disc=False):
    eval_record(thresholds=thresholds).model_copy(update={"min_component_px": min_component_px,
                                                          "drop_on_optic_disc": drop_on_optic_disc}).write(path)
    return path


def run_with_eval(models, fundus, tmp_path, **rules):
    eval_json = write_eval_json(tmp_path / "eval.json", **rules)
    out = tmp_path / "out"
    predict.main([str(fundus[0]), "--model", str(models / "multiclass"), "--out", str(out), "--eval", str(eval_json)])
    return np.load(out / "eye.npy")


def test_eval_json_gives_per_class_thresholds(models, fundus, tmp_path):
    planes = run_with_eval(models, fundus, tmp_path, thresholds={"red": 0.0, "bright": 1.01})
    assert_plane_is(planes[..., 1], fundus[1])
    assert not planes[..., 2].any()


def test_eval_json_drops_components_smaller_than_its_minimum(models, fundus, tmp_path):
    # A spot covers about 70 of the model's 32x32 pixels.
    kept = run_with_eval(models, fundus, tmp_path, thresholds={"red": 0.5, "bright": 0.5}, min_component_px=40)
    assert_plane_is(kept[..., 2], fundus[2])
    assert_plane_is(kept[..., 1], fundus[3])
    dropped = run_with_eval(models, fundus, tmp_path, thresholds={"red": 0.5, "bright": 0.5}, min_component_px=200)
    assert not dropped[..., 1:].any()
    assert_plane_is(dropped[..., 0], fundus[1])


def test_eval_json_drops_the_bright_spot_found_as_the_optic_disc(models, fundus, tmp_path):
    # The bright spot is the brightest large region, so it is located as the optic disc.
    planes = run_with_eval(models, fundus, tmp_path, thresholds={"red": 0.5, "bright": 0.5},
                           drop_on_optic_disc=True)
    assert not planes[..., 2].any()
    assert_plane_is(planes[..., 1], fundus[3])


def test_eval_json_of_other_classes_is_one_line_error(models, fundus, tmp_path):
    write_eval_json(tmp_path / "eval.json", {"hemorrhages": 0.5})
    one_line_error(lambda: predict.main([str(fundus[0]), "--model", str(models / "multiclass"),
                                         "--out", str(tmp_path / "out"), "--eval", str(tmp_path / "eval.json")]),
                   "eval.json", "red, bright")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_any_image_mode_is_read_as_rgb_and_no_crop_covers_the_whole_image(models, tmp_path, mode, capsys):
    image, (lit, spot) = painted((64, 48), [((10, 4, 50, 44), (100, 100, 100)), ((22, 16, 38, 32), (250,) * 3)])
    image.convert("L").convert(mode).save(tmp_path / "gray.png")
    predict.main([str(tmp_path / "gray.png"), "--model", str(models / "multiclass"), "--out", str(tmp_path / "out"),
                  "--no-crop"])
    assert "whole image" in capsys.readouterr().out
    planes = np.load(tmp_path / "out" / "gray.npy")
    inside, outside = inside_and_outside(lit)
    assert planes.shape == (48, 64, 3) and (planes[inside].sum(axis=-1) == 1).all() and not planes[outside].any()
    assert_plane_is(planes[..., 1], spot)  # white: blue wins over green


def test_no_crop_and_cropping_place_the_spots_alike(models, fundus, tmp_path):
    save_model(tmp_path / "uncropped", MULTICLASS, crop=False)
    predict.main([str(fundus[0]), "--model", str(tmp_path / "uncropped"), "--out", str(tmp_path / "out")])
    planes = np.load(tmp_path / "out" / "eye.npy")
    assert_plane_is(planes[..., 2], fundus[2])
    assert_plane_is(planes[..., 1], fundus[3])


def test_without_run_json_classes_and_size_come_from_the_model(fundus, tmp_path, capsys):
    save_model(tmp_path / "bare", MULTICLASS, run_json=False)
    predict.main([str(fundus[0]), "--model", str(tmp_path / "bare"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "note: no run.json found" in out and "classes background, class1, class2, 32 px" in out
    planes = np.load(tmp_path / "out" / "eye.npy")
    assert planes.shape == (70, 90, 3)
    assert_plane_is(planes[..., 2], fundus[2])


def test_mlflow_uri_without_a_store_says_where_it_looked(fundus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_line_error(lambda: predict.main([str(fundus[0]), "--model", "runs:/abc/model", "--out", "out"]),
                   "runs:/abc/model", f"{tmp_path}/mlflow.db", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


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


def test_bad_model_paths_say_what_to_pass_before_any_output(fundus, tmp_path):
    missing = tmp_path / "models" / "nope"
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a model")
    for model, says in ((missing, "models/<variant>"), (junk, "not a readable Keras model")):
        one_line_error(lambda: predict.main([str(fundus[0]), "--model", str(model), "--out", str(tmp_path / "out")]),
                       str(model), says, "runs:/")
    assert not (tmp_path / "out").exists()


def test_command_line_prints_one_error_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = subprocess.run([sys.executable, "-m", "retinaseg.evaluation.predict", str(bad), "--model", "m", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"error: {bad}: unreadable" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
