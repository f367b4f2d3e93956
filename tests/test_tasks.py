"""The one convention of a task (one class: a sigmoid plane; several: background + softmax) and its followers."""

import numpy as np
import pytest
from keras import ops

from retinaseg.core import tasks
from retinaseg.core.params import ModelParams
from retinaseg.core.tasks import Task
from retinaseg.model.losses import build_loss, dice_coefficient
from retinaseg.model.unet import build_unet
from retinaseg.prepare import masks

BINARY = Task("binary", {"hemorrhages": ["hemorrhages"]})
TWO = Task("multiclass", {"red": ["hemorrhages", "redsmalldots"], "bright": ["hardexudates", "softexudates"]})
FOUR = Task("each", {"hem": ["hemorrhages"], "dots": ["redsmalldots"], "hard": ["hardexudates"],
                     "soft": ["softexudates"]})
ALL = [BINARY, TWO, FOUR]
LESION_TYPES = ("hemorrhages", "redsmalldots", "hardexudates", "softexudates")


def test_one_class_is_a_single_sigmoid_plane():
    assert not BINARY.is_multiclass
    assert (BINARY.kind, BINARY.activation) == ("binary", "sigmoid")
    assert BINARY.plane_names == ["hemorrhages"] and BINARY.num_planes == 1
    assert BINARY.lesion_planes == [0] and BINARY.lesion_names == ["hemorrhages"]


def test_several_classes_get_a_background_plane_first_and_softmax():
    assert TWO.is_multiclass
    assert (TWO.kind, TWO.activation) == ("multiclass", "softmax")
    assert TWO.plane_names == ["background", "red", "bright"] and TWO.num_planes == 3
    assert TWO.lesion_planes == [1, 2] and TWO.lesion_names == ["red", "bright"]
    assert [TWO.plane_names[plane] for plane in TWO.lesion_planes] == TWO.lesion_names


def test_classes_keep_their_listed_order():
    swapped = Task("swapped", {"bright": ["hardexudates"], "red": ["hemorrhages"]})
    assert swapped.plane_names == ["background", "bright", "red"]


@pytest.mark.parametrize("task", ALL, ids=lambda task: task.name)
def test_from_planes_rebuilds_the_same_convention(task: Task):
    rebuilt = Task.from_planes(task.name, task.plane_names)
    assert rebuilt.plane_names == task.plane_names
    assert rebuilt.lesion_names == task.lesion_names and rebuilt.lesion_planes == task.lesion_planes
    assert (rebuilt.kind, rebuilt.activation, rebuilt.num_planes) == (task.kind, task.activation, task.num_planes)
    assert all(members == () for members in rebuilt.classes.values()), "lesion types are not in plane names"


def test_module_lesion_planes_from_a_plane_count():
    assert tasks.lesion_planes(1) == [0]
    assert tasks.lesion_planes(2) == [1]
    assert tasks.lesion_planes(3) == [1, 2]
    assert tasks.lesion_planes(5) == [1, 2, 3, 4]
    for task in ALL:
        assert tasks.lesion_planes(task.num_planes) == task.lesion_planes


@pytest.mark.parametrize("task, planes", [(BINARY, 1), (TWO, 3), (FOUR, 5)], ids=["binary", "two", "four"])
def test_model_output_follows_the_task(task: Task, planes: int):
    params = ModelParams(depth=2, base_filters=2, dropout=0.0, batch_norm=False, upsampling="transpose")
    model = build_unet(8, task, params)
    head = model.get_layer("probabilities")
    assert model.output_shape == (None, 8, 8, planes)
    assert head.activation.__name__ == task.activation
    out = model.predict(np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3)).astype(np.float32), verbose=0)
    if task.is_multiclass:
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
    else:
        assert ((out > 0) & (out < 1)).all()


def lesion_maps(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lesion: rng.random((6, 6)) < 0.2 for lesion in LESION_TYPES}


@pytest.mark.parametrize("task", ALL, ids=lambda task: task.name)
def test_mask_planes_follow_the_task(task: Task):
    planes = masks.class_planes(lesion_maps(), task)
    assert planes.shape == (6, 6, task.num_planes)
    confidence = {lesion: mask.astype(np.uint8) * 200 for lesion, mask in lesion_maps(1).items()}
    assert masks.confidence_planes(confidence, task).shape == (6, 6, task.num_planes)
    if task.is_multiclass:
        assert (planes.sum(axis=-1) == 1).all(), "softmax targets: exactly one plane per pixel"


@pytest.mark.parametrize("task", ALL, ids=lambda task: task.name)
def test_dice_scores_the_lesion_planes_of_the_task(task: Task):
    truth = masks.class_planes(lesion_maps(), task)[None].astype(np.float32)
    assert truth[..., task.lesion_planes].any(), "the test needs lesion pixels"
    for plane in range(task.num_planes):
        wrong = truth.copy()
        wrong[..., plane] = 1 - wrong[..., plane]
        dice = float(ops.convert_to_numpy(dice_coefficient(truth, wrong)))
        loss = float(ops.convert_to_numpy(build_loss("dice", task)(truth, wrong)))
        if plane in task.lesion_planes:
            assert dice < 0.9 and loss > 0.1, f"a wrong {task.plane_names[plane]} plane must cost"
        else:
            assert dice == pytest.approx(1.0) and loss == pytest.approx(0.0, abs=1e-6), "background is left out"
