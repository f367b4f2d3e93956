"""prepare carries the simulated truth of a synthetic set into each prepared split, and refuses a damaged one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error

from retinaseg.core import layout
from retinaseg.core.params import PrepareParams
from retinaseg.core.tasks import Task
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.prepare.sets import prepare_dataset

NUM = 6
SIZE = (150, 116)
PARAMS = PrepareParams(threshold=0.1, core_threshold=0.75, image_size=32, crop_to_fundus=True, train_ids="1,4")
#: One binary task per lesion type, so each lesion can be looked up in the confidence of its own type.
TASKS = [Task(lesion, {lesion: (lesion,)}) for lesion in layout.LESION_TYPES]


def _prepare(raw: Path, out: Path) -> dict:
    return prepare_dataset(raw, out, tasks=TASKS, params=PARAMS, workers=1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "realistic"
    generate(root, num_images=NUM, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def prepared(raw: Path) -> tuple[Path, dict]:
    out = raw.parent / "prepared"
    return out, _prepare(raw, out)


@pytest.fixture
def damaged(raw: Path, tmp_path: Path) -> Path:
    """A private copy of the raw set whose truth file a test may damage."""
    return Path(shutil.copytree(raw, tmp_path / "raw"))


def test_each_split_gets_the_truth_of_exactly_its_images(raw: Path, prepared: tuple[Path, dict]) -> None:
    out, manifest = prepared
    source = json.loads((raw / layout.SIMULATED_TRUTH).read_text())["images"]
    assert manifest["split"] == {"train": [1, 4], "test": [2, 3, 5, 6]}
    for name, ids in manifest["split"].items():
        truth = json.loads((out / name / "truth.json").read_text())
        assert set(truth) == {"source_size", "crop_box", "image_size", "images"}
        assert truth["source_size"] == list(SIZE) == manifest["source_size"]
        assert truth["crop_box"] == manifest["crop_box"] and truth["image_size"] == PARAMS.image_size
        assert list(truth["images"]) == [str(i) for i in ids]
        assert truth["images"] == {str(i): source[str(i)] for i in ids}  # full-size coordinates, unchanged
    assert manifest["simulated_truth"] is True
    assert json.loads((out / "manifest.json").read_text())["simulated_truth"] is True


def test_crop_box_and_image_size_map_the_lesions_onto_the_prepared_arrays(prepared: tuple[Path, dict]) -> None:
    """A lesion some annotator noticed lies on marked confidence of its type, once mapped as truth.json says.

    This ties the full-size coordinates to the arrays evaluation scores, e.g. a crop offset left out.
    """
    out, _ = prepared
    hits = []
    for name in ("train", "test"):
        truth = json.loads((out / name / "truth.json").read_text())
        x0, y0, x1, y1 = truth["crop_box"]
        scale_x, scale_y = truth["image_size"] / (x1 - x0), truth["image_size"] / (y1 - y0)
        ids = np.load(out / name / "ids.npy").tolist()
        confidence = {lesion: np.load(out / name / f"confidence_{lesion}.npy")[..., 0] for lesion in layout.LESION_TYPES}
        for row, image_id in enumerate(ids):
            for lesion in truth["images"][str(image_id)]:
                if lesion["annotators"] > 0:
                    col, line = math.floor((lesion["x"] - x0) * scale_x), math.floor((lesion["y"] - y0) * scale_y)
                    hits.append(confidence[lesion["type"]][row, line, col] > 0)
    assert len(hits) > 100 and np.mean(hits) > 0.95


def test_a_real_dataset_has_no_truth_and_prepares_as_before(tmp_path: Path) -> None:
    """The easy style writes no truth file, like a real DIARETDB1: nothing to carry, nothing fails."""
    generate(tmp_path / "raw", num_images=NUM, size=SIZE, seed=0, style="easy")
    assert not (tmp_path / "raw" / layout.SIMULATED_TRUTH).exists()
    manifest = _prepare(tmp_path / "raw", tmp_path / "prepared")
    assert manifest["simulated_truth"] is False
    assert json.loads((tmp_path / "prepared" / "manifest.json").read_text())["simulated_truth"] is False
    assert not list((tmp_path / "prepared").rglob("truth.json"))


def _drop_image(truth: dict) -> None:
    del truth["images"]["5"]


def _drop_key(truth: dict) -> None:
    del truth["images"]["2"][0]["annotators"]


def _resize(truth: dict) -> None:
    truth["source_size"] = [1500, 1152]


def _text_coordinate(truth: dict) -> None:
    truth["images"]["1"][0]["x"] = "12.5"


@pytest.mark.parametrize(("damage", "reason"), [
    (b"{\"style\": \"realistic\", \"images\": {", "unreadable simulated truth (Expecting"),
    (b"\xff\xfe not utf-8", "unreadable simulated truth ("),
    (b"[]", "expected a JSON object with source_size and images"),
    (_drop_image, "no lesion list for image005.png"),
    (_drop_key, "image 2: expected a list of lesions, each an object with type, kind, x, y"),
    (_text_coordinate, "image 1: expected a list of lesions"),
    (_resize, "source_size [1500, 1152] differs from the 150x116 of resources/images/ddb1_fundusmask/fmask.tif"),
], ids=["truncated", "not utf-8", "not an object", "image missing", "key missing", "text number", "other size"])
def test_a_damaged_truth_file_stops_prepare_with_one_line_naming_it(damaged: Path, tmp_path: Path,
                                                                   damage: object, reason: str) -> None:
    path = damaged / layout.SIMULATED_TRUTH
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        truth = json.loads(path.read_text())
        damage(truth)
        path.write_text(json.dumps(truth))
    out = tmp_path / "prepared"
    one_line_error(lambda: _prepare(damaged, out), f"{path}: {reason}", "rerun the fetch stage")
    assert not out.exists()
