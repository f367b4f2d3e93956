"""Offline augmentation: layout of the output, determinism, and image/mask alignment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from retinaseg.augment.warps import augment, augment_training_set, random_affine
from retinaseg.core.arrays import load_set
from retinaseg.core.params import AugmentParams
from retinaseg.core.params import load as load_params

PROJECT = Path(__file__).resolve().parents[1]

HEIGHT, WIDTH = 32, 40  # not square, so a swapped row/col axis shows up

STILL = dict(copies=3, seed=0, rotation_deg=0.0, shift=0.0, zoom=(1.0, 1.0), shear_deg=0.0,
             horizontal_flip=False, vertical_flip=False, brightness=0.0, contrast=0.0)
TYPICAL = dict(STILL, rotation_deg=20.0, shift=0.1, zoom=(0.7, 1.0), shear_deg=10.0,
               horizontal_flip=True, vertical_flip=True, brightness=0.1, contrast=0.1)
GEOMETRY = dict(STILL, rotation_deg=30.0, shift=0.1, zoom=(0.7, 1.0), shear_deg=10.0,
                horizontal_flip=True, vertical_flip=True)


def params(ranges: dict, **overrides) -> AugmentParams:
    """The typed block augment() takes; building it checks the ranges as params.yaml's would be."""
    return AugmentParams(**dict(ranges, **overrides))


def noise(count: int = 3, planes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = (rng.random((count, HEIGHT, WIDTH, planes)) < 0.3).astype(np.uint8)
    return images, masks


def test_shapes_and_dtypes():
    images, masks = noise(count=3, planes=5)
    images_out, masks_out, source, _ = augment(images, masks, params(TYPICAL, copies=2))
    assert images_out.shape == (9, HEIGHT, WIDTH, 3) and images_out.dtype == np.uint8
    assert masks_out.shape == (9, HEIGHT, WIDTH, 5) and masks_out.dtype == np.uint8
    assert source.shape == (9,) and source.dtype == np.int32


def test_originals_come_first_unchanged_and_inputs_are_untouched():
    images, masks = noise()
    before = images.copy(), masks.copy()
    images_out, masks_out, _, _ = augment(images, masks, params(TYPICAL))
    np.testing.assert_array_equal(images_out[:3], before[0])
    np.testing.assert_array_equal(masks_out[:3], before[1])
    np.testing.assert_array_equal(images, before[0])
    np.testing.assert_array_equal(masks, before[1])


def test_source_index_is_copy_major():
    images, masks = noise(count=3)
    _, _, source, _ = augment(images, masks, params(TYPICAL, copies=2))
    np.testing.assert_array_equal(source, [0, 1, 2, 0, 1, 2, 0, 1, 2])


def test_still_ranges_give_exact_copies_of_the_source():
    images, masks = noise()
    images_out, masks_out, source, _ = augment(images, masks, params(STILL))
    np.testing.assert_array_equal(images_out, images[source])
    np.testing.assert_array_equal(masks_out, masks[source])


def test_same_seed_gives_identical_bytes():
    images, masks = noise()
    first = augment(images, masks, params(TYPICAL))
    second = augment(images, masks, params(TYPICAL))
    for a, b in zip(first[:3], second[:3]):
        assert a.tobytes() == b.tobytes()
    assert first[3] is None


def test_other_seed_gives_other_images_and_masks():
    images, masks = noise()
    first = augment(images, masks, params(TYPICAL))
    other = augment(images, masks, params(TYPICAL, seed=1))
    assert not np.array_equal(first[0][3:], other[0][3:])
    assert not np.array_equal(first[1][3:], other[1][3:])


def test_soft_planes_move_with_their_masks():
    images, masks = noise()
    soft = masks * np.uint8(255)
    _, masks_out, _, soft_out = augment(images, masks, params(TYPICAL, copies=4), soft=soft)
    assert soft_out.dtype == np.uint8 and soft_out.shape == masks_out.shape
    assert np.array_equal(soft_out[:3], soft)
    agree = (soft_out[3:] >= 128) == masks_out[3:].astype(bool)
    assert agree.mean() > 0.95  # bilinear and nearest differ only along edges
    assert len(np.unique(soft_out[3:])) > 2  # interpolated, not snapped


def test_masks_stay_binary():
    images, masks = noise()
    _, masks_out, _, _ = augment(images, masks, params(TYPICAL, copies=4))
    assert set(np.unique(masks_out[3:]).tolist()) == {0, 1}


def squares() -> tuple[np.ndarray, np.ndarray]:
    """A red square under mask plane 0 and a green one under plane 1, on black."""
    images = np.zeros((1, HEIGHT, WIDTH, 3), np.uint8)
    masks = np.zeros((1, HEIGHT, WIDTH, 2), np.uint8)
    for plane, (rows, cols) in enumerate([(slice(4, 14), slice(20, 34)),
                                          (slice(18, 28), slice(6, 18))]):
        images[0, rows, cols, plane] = 255
        masks[0, rows, cols, plane] = 1
    return images, masks


def test_image_is_interpolated_and_masks_are_not():
    images, masks = squares()
    images_out, masks_out, _, _ = augment(images, masks, params(GEOMETRY, copies=4))
    assert np.any((images_out[1:] > 0) & (images_out[1:] < 255))
    assert set(np.unique(masks_out).tolist()) == {0, 1}


def test_image_and_each_mask_plane_move_together():
    images, masks = squares()
    images_out, masks_out, _, _ = augment(images, masks, params(GEOMETRY, copies=8))
    moved = checked = 0
    for image, mask in zip(images_out[1:], masks_out[1:]):
        moved += not np.array_equal(mask, masks[0])
        for plane in range(2):
            inside = mask[..., plane] == 1
            channel = image[..., plane].astype(float)
            if inside.sum() >= 10:  # a square pushed out of view has nothing to compare
                checked += 1
                assert channel[inside].mean() > 180
                assert channel[~inside].mean() < 30
    assert moved >= 6 and checked >= 12


@pytest.mark.parametrize("option, axis", [("horizontal_flip", 1), ("vertical_flip", 0)])
def test_flip_alone_mirrors_exactly(option: str, axis: int):
    images, masks = noise(count=2)
    images_out, masks_out, source, _ = augment(images, masks, params(STILL, copies=8, **{option: True}))
    outcomes = set()
    for row in range(2, len(source)):
        image, mask = images[source[row]], masks[source[row]]
        flipped = np.array_equal(images_out[row], np.flip(image, axis))
        assert flipped or np.array_equal(images_out[row], image)
        expected = np.flip(mask, axis) if flipped else mask
        np.testing.assert_array_equal(masks_out[row], expected)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_zoom_below_one_zooms_in():
    images = np.zeros((1, HEIGHT, WIDTH, 3), np.uint8)
    images[0, 12:20, 16:24] = 255
    masks = np.zeros((1, HEIGHT, WIDTH, 1), np.uint8)
    images_out, _, _, _ = augment(images, masks, params(STILL, copies=1, zoom=(0.5, 0.5)))
    bright_before = (images_out[0] > 127).sum()
    bright_after = (images_out[1] > 127).sum()
    assert bright_after == pytest.approx(4 * bright_before, rel=0.2)


def test_brightness_alone_shifts_every_pixel_equally_and_spares_masks():
    images, masks = noise()
    images = (images // 2 + 64).astype(np.uint8)  # 64..191: a +-25.5 offset never clips
    images_out, masks_out, source, _ = augment(images, masks, params(STILL, brightness=0.1))
    offsets = images_out[3:].astype(int) - images[source[3:]].astype(int)
    per_row = offsets.reshape(len(offsets), -1)
    assert (per_row == per_row[:, :1]).all()
    assert np.abs(per_row[:, 0]).max() <= 26 and np.any(per_row[:, 0] != 0)
    np.testing.assert_array_equal(masks_out, masks[source])


def test_contrast_alone_keeps_channel_means_and_scales_spread():
    images, masks = noise()
    images = (images // 2 + 64).astype(np.uint8)
    images_out, _, source, _ = augment(images, masks, params(STILL, contrast=0.2))
    before, after = images[source[3:]].astype(float), images_out[3:].astype(float)
    np.testing.assert_allclose(after.mean(axis=(1, 2)), before.mean(axis=(1, 2)), atol=0.5)
    ratios = after.std(axis=(1, 2, 3)) / before.std(axis=(1, 2, 3))
    assert ((ratios > 0.79) & (ratios < 1.21)).all() and np.ptp(ratios) > 0.01


def test_random_affine_with_still_ranges_is_identity():
    ranges = {key: STILL[key] for key in
              ("rotation_deg", "shift", "zoom", "shear_deg", "horizontal_flip", "vertical_flip")}
    matrix = random_affine(np.random.default_rng(0), HEIGHT, WIDTH, **ranges)
    np.testing.assert_array_equal(matrix, np.eye(3))


def test_random_affine_keeps_centre_and_draws_within_ranges():
    rng = np.random.default_rng(0)
    centre = np.array([(HEIGHT - 1) / 2, (WIDTH - 1) / 2, 1.0])
    angles, shears, scales = [], [], []
    for _ in range(200):
        rotation = random_affine(rng, HEIGHT, WIDTH, rotation_deg=20.0, shift=0.0, zoom=(1.0, 1.0),
                                 shear_deg=0.0, horizontal_flip=False, vertical_flip=False)
        np.testing.assert_allclose(rotation @ centre, centre, atol=1e-9)
        angles.append(math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])))
        shear = random_affine(rng, HEIGHT, WIDTH, rotation_deg=0.0, shift=0.0, zoom=(1.0, 1.0),
                              shear_deg=10.0, horizontal_flip=False, vertical_flip=False)
        np.testing.assert_allclose(shear @ centre, centre, atol=1e-9)
        assert shear[0, 0] == shear[1, 1] == 1 and shear[0, 1] == 0
        shears.append(math.degrees(math.atan(shear[1, 0])))
        zoom = random_affine(rng, HEIGHT, WIDTH, rotation_deg=0.0, shift=0.1, zoom=(0.7, 1.0),
                             shear_deg=0.0, horizontal_flip=False, vertical_flip=False)
        scales.append(zoom[0, 0])
        displacement = (zoom @ centre - centre)[:2]
        assert (np.abs(displacement) <= (0.1 * HEIGHT, 0.1 * WIDTH)).all()
    assert 15 < max(np.abs(angles)) <= 20
    assert 7 < max(np.abs(shears)) <= 10
    assert 0.7 <= min(scales) < 0.75 and 0.95 < max(scales) <= 1.0


# The ranges are no longer checked here but once, in params.py: see test_params.py
# (test_augment_limits_are_checked_by_params, test_a_block_built_in_code_obeys_the_same_limits).


def test_takes_the_block_params_yaml_gives():
    block = load_params(PROJECT / "params.yaml").augment.model_copy(update={"copies": 2})
    images, masks = noise()
    images_out, masks_out, source, _ = augment(images, masks, block)
    assert len(images_out) == len(masks_out) == 9
    np.testing.assert_array_equal(source, [0, 1, 2] * 3)
    assert not np.array_equal(images_out[3:], images[source[3:]])


@pytest.mark.parametrize("change, key", [
    (lambda images, masks: (images.astype(np.float32), masks), "images"),
    (lambda images, masks: (images[..., :2], masks), "images"),
    (lambda images, masks: (images[0], masks), "images"),
    (lambda images, masks: (images, masks * 2), "masks"),
    (lambda images, masks: (images, masks.astype(bool)), "masks"),
    (lambda images, masks: (images, masks[:2]), "masks"),
    (lambda images, masks: (images, masks[:, :-1]), "masks"),
    (lambda images, masks: (images, masks[..., 0]), "masks"),
])
def test_bad_arrays_raise_naming_the_argument(change, key: str):
    images, masks = change(*noise())
    with pytest.raises(ValueError, match=rf"^{key} must be .*, got ") as caught:
        augment(images, masks, params(TYPICAL))
    assert "\n" not in str(caught.value)


def _write_set(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)


def test_augment_training_set_warps_every_task_and_target_with_its_image(tmp_path: Path):
    """Planes of all tasks go through one warp and come back split by task, in the files load_set reads."""
    images, binary = noise(count=2, planes=1, seed=1)
    _, multiclass = noise(count=2, planes=3, seed=2)
    rng = np.random.default_rng(3)
    soft = {task: rng.integers(0, 256, planes.shape, dtype=np.uint8)
            for task, planes in (("binary", binary), ("multiclass", multiclass))}
    _write_set(tmp_path / "prepared" / "train", {
        "images": images, "ids": np.array([4, 9]), "masks_binary": binary, "masks_multiclass": multiclass,
        "confidence_binary": soft["binary"], "confidence_multiclass": soft["multiclass"]})
    block = params(TYPICAL, copies=2)

    rows = augment_training_set(tmp_path / "prepared", tmp_path / "augmented", block)

    expected = augment(images, np.concatenate([binary, multiclass], axis=-1), block,
                       soft=np.concatenate([soft["binary"], soft["multiclass"]], axis=-1))
    assert rows == 6
    masks, confidence = load_set(tmp_path / "augmented"), load_set(tmp_path / "augmented", target="confidence")
    np.testing.assert_array_equal(masks["images"], expected[0])
    np.testing.assert_array_equal(masks["ids"], [4, 9] * 3)
    np.testing.assert_array_equal(masks["binary"], expected[1][..., :1])
    np.testing.assert_array_equal(masks["multiclass"], expected[1][..., 1:])
    np.testing.assert_array_equal(confidence["binary"], expected[3][..., :1])
    np.testing.assert_array_equal(confidence["multiclass"], expected[3][..., 1:])
    assert sorted(p.name for p in (tmp_path / "augmented").iterdir()) == [
        "confidence_binary.npy", "confidence_multiclass.npy", "ids.npy", "images.npy",
        "masks_binary.npy", "masks_multiclass.npy"]
