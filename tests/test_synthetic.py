"""Both synthetic styles must match the official layout and encoding, deterministically."""

from __future__ import annotations

import hashlib
import json
import math
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.core import layout
from retinaseg.core.params import DataParams
from retinaseg.fetch.dataset import DiaretDB1
from retinaseg.fetch.synthetic.calibration import region_contrast
from retinaseg.fetch.synthetic.drawing import Canvas
from retinaseg.fetch.synthetic.generator import STYLES, build_archive, generate

NUM = 8
SIZE = (150, 115)


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module", params=["realistic", "easy"])
def style(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, style: str) -> Path:
    root = tmp_path_factory.mktemp(style)
    generate(root, num_images=NUM, size=SIZE, seed=0, style=style, workers=2)
    return root


@pytest.fixture(scope="module")
def maps(root: Path) -> dict[str, np.ndarray]:
    """All maps of one lesion type stacked: (images, height, width)."""
    return {
        lesion: np.stack([_gray(root / layout.groundtruth_path(lesion, i)) for i in range(1, NUM + 1)])
        for lesion in layout.LESION_TYPES
    }


def test_both_styles_are_available_and_realistic_is_the_default() -> None:
    assert set(STYLES) == {"realistic", "easy"}
    assert generate.__kwdefaults__["style"] == "realistic"


def test_same_seed_gives_identical_bytes_and_other_seed_differs(root: Path, style: str, tmp_path: Path) -> None:
    """Whatever the number of worker processes that draw the images."""
    generate(tmp_path / "same", num_images=NUM, size=SIZE, seed=0, style=style, workers=1)
    generate(tmp_path / "other", num_images=NUM, size=SIZE, seed=1, style=style)
    reference, same, other = _files(root), _files(tmp_path / "same"), _files(tmp_path / "other")
    assert same == reference
    assert other.keys() == reference.keys()
    images = [str(layout.image_path(i)) for i in range(1, NUM + 1)]
    assert all(other[name] != reference[name] for name in images)


def test_layout_is_complete(root: Path, style: str) -> None:
    """The official files, plus the simulated truth beside resources/ in the style that has one."""
    expected = {str(layout.FUNDUS_MASK), str(layout.TRAIN_LIST), str(layout.TEST_LIST)}
    if style == "realistic":
        expected.add(str(layout.SIMULATED_TRUTH))
    for image_id in range(1, NUM + 1):
        expected.add(str(layout.image_path(image_id)))
        expected.update(str(layout.groundtruth_path(lesion, image_id)) for lesion in layout.LESION_TYPES)
    assert set(_files(root)) == expected


def test_split_lists_follow_the_official_proportion(root: Path) -> None:
    num_train = math.ceil(NUM * 28 / 89)
    train = (root / layout.TRAIN_LIST).read_text().splitlines()
    test = (root / layout.TEST_LIST).read_text().splitlines()
    assert train == [f"images/ddb1_fundusimages/image{i:03d}.png" for i in range(1, num_train + 1)]
    assert test == [f"images/ddb1_fundusimages/image{i:03d}.png" for i in range(num_train + 1, NUM + 1)]


def test_modes_and_sizes_match_the_official_files(root: Path) -> None:
    with Image.open(root / layout.FUNDUS_MASK) as mask:
        assert (mask.format, mask.mode, mask.size) == ("TIFF", "L", SIZE)
    with Image.open(root / layout.image_path(1)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", SIZE)
    with Image.open(root / layout.groundtruth_path("hemorrhages", 1)) as level_map:
        assert (level_map.format, level_map.mode, level_map.size) == ("PNG", "L", SIZE)


def test_maps_encode_summed_confidence_in_steps_of_21(maps: dict[str, np.ndarray]) -> None:
    for lesion, stack in maps.items():
        assert stack.any(), f"no {lesion} in any image"
        assert np.all(stack % layout.CONFIDENCE_STEP == 0)
        assert stack.max() <= 4 * 3 * layout.CONFIDENCE_STEP
    levels = np.unique(np.concatenate([stack.ravel() for stack in maps.values()]))
    assert len(levels[levels > 0]) >= 4


def test_some_images_lack_a_type_but_most_have_haemorrhages(maps: dict[str, np.ndarray]) -> None:
    per_image = {lesion: stack.reshape(NUM, -1).any(1) for lesion, stack in maps.items()}
    assert not all(per_image[lesion].all() for lesion in layout.LESION_TYPES)
    assert per_image["hemorrhages"].sum() >= NUM // 2


def test_lesions_lie_inside_the_field_of_view_and_outside_is_black(root: Path, maps: dict[str, np.ndarray]) -> None:
    fov = _gray(root / layout.FUNDUS_MASK) > 0
    for stack in maps.values():
        assert not stack[:, ~fov].any()
    for image_id in range(1, NUM + 1):
        image = _gray(root / layout.image_path(image_id))
        assert not image[~fov].any()
        assert image[fov].mean() > 40


def test_easy_lesions_stand_out_from_the_fundus(tmp_path: Path) -> None:
    """In the easy style haemorrhages are much darker and exudates much more yellow than the fundus."""
    generate(tmp_path, num_images=NUM, size=SIZE, seed=0, style="easy")
    fov = _gray(tmp_path / layout.FUNDUS_MASK) > 0
    images = np.stack([_gray(tmp_path / layout.image_path(i)) for i in range(1, NUM + 1)]).astype(float)
    maps = {lesion: np.stack([_gray(tmp_path / layout.groundtruth_path(lesion, i)) for i in range(1, NUM + 1)])
            for lesion in ("hemorrhages", "hardexudates")}
    fundus = images[:, fov].mean(axis=(0, 1))
    haemorrhage = images[maps["hemorrhages"] >= 84].mean(axis=0)
    exudate = images[maps["hardexudates"] >= 84].mean(axis=0)
    assert haemorrhage.sum() < 0.7 * fundus.sum()
    assert exudate[1] > 1.5 * fundus[1]


def test_lesions_are_visible_where_all_annotators_agree(root: Path, maps: dict[str, np.ndarray]) -> None:
    """In the cores that all four annotators mark (>= 0.75) haemorrhages darken and exudates brighten the green."""
    fov = _gray(root / layout.FUNDUS_MASK) > 0
    green = [_gray(root / layout.image_path(i))[:, :, 1].astype(np.float32) for i in range(1, NUM + 1)]

    def core_contrast(lesion: str) -> float:
        cores = [region_contrast(g, (m >= 210) & fov, fov, ring_width=3) for g, m in zip(green, maps[lesion])]
        return float(np.mean([c for c in cores if c is not None]))

    assert core_contrast("hemorrhages") < -0.15
    assert core_contrast("hardexudates") > 0.2


def test_full_size_disc_is_about_1150_px_tall_and_centred(tmp_path: Path) -> None:
    generate(tmp_path, num_images=1)
    fov = _gray(tmp_path / layout.FUNDUS_MASK) > 0
    assert fov.shape == (1152, 1500)
    rows, cols = np.flatnonzero(fov.any(1)), np.flatnonzero(fov.any(0))
    assert 1140 <= len(rows) <= 1152 and 1140 <= len(cols) <= 1160
    assert abs((cols[0] + cols[-1]) / 2 - 749.5) <= 1 and not fov[:, :100].any()
    distance = np.hypot(*(np.indices(fov.shape) - np.array([575.5, 749.5])[:, None, None]))
    brightness = _gray(tmp_path / layout.image_path(1)).astype(float).sum(axis=2)
    assert brightness[distance < 150].mean() > 1.3 * brightness[fov & (distance > 540)].mean()


def test_build_archive_uses_the_official_top_folder_and_stable_bytes(root: Path, tmp_path: Path) -> None:
    build_archive(root, tmp_path / "a.zip")
    build_archive(root, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        assert all(name.startswith(f"{layout.ARCHIVE_ROOT}/") for name in names)
        member = f"{layout.ARCHIVE_ROOT}/{layout.image_path(3)}"
        assert archive.read(member) == (root / layout.image_path(3)).read_bytes()
    assert {name for name in names if not name.endswith("/")} == {f"{layout.ARCHIVE_ROOT}/{n}" for n in _files(root)}


def _lowest(field: str) -> int:
    """The smallest value the ``data`` params block allows for ``field``."""
    return next(limit.ge for limit in DataParams.model_fields[field].metadata if hasattr(limit, "ge"))


def _highest(field: str) -> int:
    return next(limit.le for limit in DataParams.model_fields[field].metadata if hasattr(limit, "le"))


def test_data_synthetic_offers_exactly_the_generator_styles() -> None:
    """The style names are checked only by params (data.synthetic), so they must be the generator's."""
    assert set(typing.get_args(DataParams.model_fields["synthetic"].annotation)) == set(STYLES)


def test_image_ids_the_data_block_allows_fit_the_layout() -> None:
    assert _highest("num_images") == layout.NUM_IMAGES
    assert len(layout.image_name(_highest("num_images"))) == len("image000.png")


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("extreme", ["smallest", "widest", "tallest"])
def test_the_extreme_sizes_the_data_block_allows_load_in_both_styles(tmp_path: Path, style: str, extreme: str) -> None:
    """generate() no longer checks its arguments: whatever the data block accepts must give a loadable set."""
    low, high = _lowest("image_width"), _highest("image_width")
    assert (low, high) == (_lowest("image_height"), _highest("image_height"))
    size = {"smallest": (low, low), "widest": (high, low), "tallest": (low, high)}[extreme]
    num_images = _lowest("num_images")
    generate(tmp_path, num_images=num_images, size=size, seed=0, style=style)
    dataset = DiaretDB1(tmp_path)
    split = dataset.official_split()
    assert split["train"] and split["test"]
    assert sorted(split["train"] + split["test"]) == dataset.image_ids() == list(range(1, num_images + 1))
    assert dataset.read_image(num_images).shape == (size[1], size[0], 3)
    assert dataset.read_fundus_mask().any()


def test_the_loader_accepts_everything_the_generator_writes(root: Path) -> None:
    """Every file, read back through DiaretDB1 with its own checks of ids, split, modes and sizes."""
    dataset = DiaretDB1(root)
    assert dataset.root == root
    ids = dataset.image_ids()
    assert ids == list(range(1, NUM + 1))
    split = dataset.official_split()
    assert set(split) == {"train", "test"}
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == ids

    with Image.open(root / layout.FUNDUS_MASK) as mask_file:
        assert mask_file.mode in ("L", "1")  # the modes read_fundus_mask accepts; a palette would be refused
        raw = np.asarray(mask_file)
    assert set(np.unique(raw).tolist()) <= {0, 255}
    fov = dataset.read_fundus_mask()
    assert fov.dtype == bool and fov.shape == (SIZE[1], SIZE[0])
    assert 0.3 < fov.mean() < 0.95

    for image_id in ids:
        image = dataset.read_image(image_id)
        assert image.dtype == np.uint8 and image.shape == (*fov.shape, 3)
        for lesion in layout.LESION_TYPES:
            level_map = dataset.read_groundtruth(lesion, image_id)
            assert level_map.dtype == np.uint8 and level_map.shape == fov.shape
            assert np.all(level_map % layout.CONFIDENCE_STEP == 0), f"{lesion} of image {image_id}"


# --- the simulated truth of the realistic style --------------------------------------------

#: sha256 of image + maps (in LESION_TYPES order) of realistic images 1..3, seed 0, on a 300x230
#: canvas, since annotators mark by visibility: a change to any random draw of the realistic style
#: shows here (so does a new NumPy or Pillow), and means re-measuring the calibration.
UNCHANGED = {
    1: "49dfced97c4f2a43133c8bf97f98796a0362316de5670967d7e1c08a530370a0",
    2: "cbaeced5225b183f236390a77786bfd44f541a2ca0582448f70016e0d8f5e874",
    3: "751ba8f9ceafea93380b1726795d743c51ac55707d9eccd7c17a44a997e2d511",
}
TRUTH_CANVAS = (300, 230)
LESION_KEYS = {"type", "kind", "x", "y", "major", "minor", "angle", "visibility", "annotators"}
CLINICAL = {"hardexudates": {"hard_exudate"}, "softexudates": {"cotton_wool_spot"},
            "hemorrhages": {"flame_haemorrhage", "dot_blot_haemorrhage"}, "redsmalldots": {"microaneurysm"}}


@pytest.fixture(scope="module")
def drawn() -> dict[int, tuple]:
    """(image, maps, lesions) of the realistic images 1..3 of seed 0."""
    canvas = Canvas.create(*TRUTH_CANVAS)
    return {i: STYLES["realistic"](canvas, np.random.default_rng([0, i])) for i in UNCHANGED}


@pytest.fixture(scope="module")
def lesions(drawn: dict[int, tuple]) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Every lesion drawn, with the maps of its image."""
    return [(lesion, maps) for _, maps, truth in drawn.values() for lesion in truth]


def test_the_realistic_style_draws_the_same_bytes_from_the_same_seed(drawn: dict[int, tuple]) -> None:
    for image_id, (image, maps, _) in drawn.items():
        digest = hashlib.sha256(image.tobytes())
        for lesion in layout.LESION_TYPES:
            digest.update(maps[lesion].tobytes())
        assert digest.hexdigest() == UNCHANGED[image_id], f"image {image_id}"


def test_every_lesion_has_its_type_kind_shape_and_annotators(lesions: list) -> None:
    width, height = TRUTH_CANVAS
    for lesion, _ in lesions:
        assert set(lesion) == LESION_KEYS
        assert lesion["kind"] in CLINICAL[lesion["type"]]
        assert 0 <= lesion["x"] < width and 0 <= lesion["y"] < height
        assert lesion["major"] >= lesion["minor"] > 0 and abs(lesion["angle"]) < 10
        assert type(lesion["annotators"]) is int and 0 <= lesion["annotators"] <= 4
        assert lesion["visibility"] >= 0 and round(lesion["visibility"], 3) == lesion["visibility"]
        assert all(round(lesion[key], 2) == lesion[key] for key in ("x", "y", "major", "minor", "angle"))
    assert {lesion["type"] for lesion, _ in lesions} == set(layout.LESION_TYPES)
    assert {lesion["annotators"] for lesion, _ in lesions} == {0, 1, 2, 3, 4}
    json.dumps([lesion for lesion, _ in lesions])  # JSON-ready as it is


def test_annotators_mark_what_the_image_shows(lesions: list) -> None:
    """Annotators share what they see: the more visible a haemorrhage, the more of them mark it."""
    haemorrhages = [lesion for lesion, _ in lesions if lesion["type"] == "hemorrhages"]
    by_count = {count: [lesion["visibility"] for lesion in haemorrhages if lesion["annotators"] == count]
                for count in range(5)}
    assert all(by_count.values()), {count: len(seen) for count, seen in by_count.items()}
    medians = [float(np.median(by_count[count])) for count in range(5)]
    assert medians == sorted(medians), medians
    assert medians[4] > 2 * medians[0]
    # Faint ones exist (opacity down to 0.05), and nobody marks the faintest.
    assert min(by_count[0]) < 0.02 < min(by_count[4])


def test_flames_are_the_elongated_haemorrhages(lesions: list) -> None:
    """Flames are stretched 2.5..7 times, other lesions at most 1.4 times (see _place)."""
    haemorrhages = [lesion for lesion, _ in lesions if lesion["type"] == "hemorrhages"]
    flames = [lesion for lesion in haemorrhages if lesion["kind"] == "flame_haemorrhage"]
    assert 0 < len(flames) < len(haemorrhages)
    for lesion, _ in lesions:
        elongation = lesion["major"] / lesion["minor"]
        assert elongation > 2.4 if lesion["kind"] == "flame_haemorrhage" else elongation < 1.45, lesion


def test_the_maps_mark_a_lesion_centre_as_often_as_its_annotators_noticed_it(lesions: list) -> None:
    """Each annotator who noticed a lesion adds at least one level at its centre, pixel (floor(y), floor(x)).

    Not always: a mark is drawn slightly off its group's centre and may miss a lesion at its edge,
    and a missed lesion may lie in a neighbour's mark.
    """
    levels = [(int(maps[lesion["type"]][math.floor(lesion["y"]), math.floor(lesion["x"])]) // 21,
               lesion["annotators"]) for lesion, maps in lesions]
    noticed = [level for level, annotators in levels if annotators > 0]
    missed = [level for level, annotators in levels if annotators == 0]
    assert np.mean([level >= annotators for level, annotators in levels]) > 0.95
    assert np.mean([level > 0 for level in noticed]) > 0.95
    assert len(missed) > 10 and np.mean([level == 0 for level in missed]) > 0.8


def test_generate_writes_the_lesions_of_every_image_beside_resources(root: Path, style: str) -> None:
    path = root / layout.SIMULATED_TRUTH
    if style == "easy":  # its marks follow the lesions: the maps are all the truth there is
        assert STYLES["easy"](Canvas.create(*SIZE), np.random.default_rng([0, 1]))[2] is None
        assert not path.exists()
        return
    truth = json.loads(path.read_text())
    assert set(truth) == {"style", "source_size", "images"}
    assert truth["style"] == "realistic" and truth["source_size"] == list(SIZE)
    assert list(truth["images"]) == [str(i) for i in range(1, NUM + 1)]
    canvas = Canvas.create(*SIZE)
    for image_id in (1, NUM):
        assert truth["images"][str(image_id)] == STYLES[style](canvas, np.random.default_rng([0, image_id]))[2]
    assert DiaretDB1(root).read_simulated_truth() == truth["images"]
