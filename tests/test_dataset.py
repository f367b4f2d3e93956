"""The loader reads the official layout and names the file in every error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error
from PIL import Image

from retinaseg.core import layout
from retinaseg.fetch.dataset import DiaretDB1, find_dataset_root
from retinaseg.fetch.synthetic.generator import generate

NUM = 8
SIZE = (150, 115)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generate(root, num_images=NUM, size=SIZE, seed=3)
    return root


@pytest.fixture
def root(generated: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(generated, tmp_path / "dataset"))


def test_reads_a_generated_folder(generated: Path) -> None:
    dataset = DiaretDB1(generated)
    assert dataset.image_ids() == list(range(1, NUM + 1))
    image = dataset.read_image(2)
    assert image.dtype == np.uint8 and image.shape == (SIZE[1], SIZE[0], 3) and image.flags.writeable
    with Image.open(generated / layout.image_path(2)) as original:
        np.testing.assert_array_equal(image, np.asarray(original))
    level_map = dataset.read_groundtruth("hardexudates", 2)
    assert level_map.dtype == np.uint8 and level_map.shape == (SIZE[1], SIZE[0])
    with Image.open(generated / layout.groundtruth_path("hardexudates", 2)) as original:
        np.testing.assert_array_equal(level_map, np.asarray(original))
    mask = dataset.read_fundus_mask()
    assert mask.dtype == bool and 0.5 < mask.mean() < 0.9
    assert dataset.official_split() == {"train": [1, 2, 3], "test": [4, 5, 6, 7, 8]}


def test_finds_the_root_inside_the_folder_the_zip_unpacks_to(root: Path, tmp_path: Path) -> None:
    parent = tmp_path / "unpacked"
    parent.mkdir()
    root.rename(parent / layout.ARCHIVE_ROOT)
    assert find_dataset_root(parent) == parent / layout.ARCHIVE_ROOT
    assert DiaretDB1(parent).image_ids() == list(range(1, NUM + 1))


def test_a_folder_without_the_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other" / "resources").mkdir(parents=True)
    one_line_error(lambda: find_dataset_root(tmp_path), str(tmp_path), str(layout.IMAGES_DIR))
    one_line_error(lambda: DiaretDB1(tmp_path / "absent"), str(tmp_path / "absent"), "not an existing folder")


def test_two_copies_side_by_side_are_ambiguous(root: Path, tmp_path: Path) -> None:
    shutil.copytree(root, tmp_path / "copy")
    one_line_error(lambda: find_dataset_root(tmp_path), str(tmp_path), "copy", "dataset")


def test_an_empty_image_folder_is_refused(root: Path) -> None:
    for path in (root / layout.IMAGES_DIR).iterdir():
        path.unlink()
    one_line_error(DiaretDB1(root).image_ids, str(root / layout.IMAGES_DIR), "imageNNN.png")


def test_split_lists_are_parsed_by_image_name_in_any_line_format(root: Path) -> None:
    lines = [b"# training", b"image002", b"C:\\ddb1\\image001.png extra", b"", b"image002.png", b""]
    (root / layout.TRAIN_LIST).write_bytes(b"\r\n".join(lines))
    (root / layout.TEST_LIST).write_text("images/ddb1_fundusimages/image008.png image007.png\n")
    assert DiaretDB1(root).official_split() == {"train": [1, 2], "test": [7, 8]}


def test_split_list_naming_a_missing_image_is_refused(root: Path) -> None:
    (root / layout.TEST_LIST).write_text("image004.png\nimage042.png\n")
    one_line_error(DiaretDB1(root).official_split, str(root / layout.TEST_LIST), "image042.png")


def test_missing_split_list_is_refused(root: Path) -> None:
    (root / layout.TRAIN_LIST).unlink()
    one_line_error(DiaretDB1(root).official_split, str(root / layout.TRAIN_LIST), "missing")


def test_missing_groundtruth_map_names_the_expected_path(root: Path) -> None:
    path = root / layout.groundtruth_path("hemorrhages", 3)
    path.unlink()
    one_line_error(lambda: DiaretDB1(root).read_groundtruth("hemorrhages", 3), str(path), "missing")


def test_truncated_png_is_refused(root: Path) -> None:
    path = root / layout.image_path(2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_line_error(lambda: DiaretDB1(root).read_image(2), str(path), "truncated")


def test_a_file_that_is_no_image_is_refused(root: Path) -> None:
    path = root / layout.groundtruth_path("softexudates", 5)
    path.write_text("<html>not found</html>")
    one_line_error(lambda: DiaretDB1(root).read_groundtruth("softexudates", 5), str(path), "unreadable")


@pytest.mark.parametrize(
    ("relative", "mode", "read"),
    [
        (layout.image_path(4), "L", lambda d: d.read_image(4)),
        (layout.image_path(4), "RGBA", lambda d: d.read_image(4)),
        (layout.groundtruth_path("redsmalldots", 4), "RGB", lambda d: d.read_groundtruth("redsmalldots", 4)),
        (layout.FUNDUS_MASK, "P", lambda d: d.read_fundus_mask()),
        (layout.FUNDUS_MASK, "I;16", lambda d: d.read_fundus_mask()),
    ],
)
def test_wrong_mode_is_refused(root: Path, relative: Path, mode: str, read) -> None:
    path = root / relative
    with Image.open(path) as image:
        image.convert(mode).save(path)
    one_line_error(lambda: read(DiaretDB1(root)), str(path), repr(mode))


def test_a_one_bit_mask_is_accepted_because_it_converts_exactly(root: Path) -> None:
    path = root / layout.FUNDUS_MASK
    expected = DiaretDB1(root).read_fundus_mask()
    with Image.open(path) as image:
        image.convert("1").save(path)
    np.testing.assert_array_equal(DiaretDB1(root).read_fundus_mask(), expected)


@pytest.mark.parametrize(
    ("relative", "read"),
    [
        (layout.image_path(6), lambda d: d.read_image(6)),
        (layout.groundtruth_path("hardexudates", 6), lambda d: d.read_groundtruth("hardexudates", 6)),
    ],
)
def test_size_different_from_the_mask_is_refused(root: Path, relative: Path, read) -> None:
    path = root / relative
    with Image.open(path) as image:
        image.resize((SIZE[0] + 10, SIZE[1])).save(path)
    one_line_error(lambda: read(DiaretDB1(root)), str(path), f"{SIZE[0] + 10}x{SIZE[1]}", f"{SIZE[0]}x{SIZE[1]}")


def test_unknown_lesion_type_is_refused(generated: Path) -> None:
    one_line_error(lambda: DiaretDB1(generated).read_groundtruth("drusen", 1), "'drusen'", "hemorrhages")
