import numpy as np

from retinaseg.core.tasks import Task
from retinaseg.prepare import masks

BINARY = Task("binary", {"hemorrhages": ["hemorrhages"]})
MULTICLASS = Task("multiclass", {"red": ["hemorrhages", "redsmalldots"], "bright": ["hardexudates", "softexudates"]})


def test_binarize_uses_fraction_of_full_scale():
    confidence = np.array([0, 21, 42, 189, 210, 252], dtype=np.uint8)
    assert masks.binarize(confidence, 0.1).tolist() == [False, False, True, True, True, True]
    assert masks.binarize(confidence, 0.75).tolist() == [False, False, False, False, True, True]


def test_one_class_task_keeps_a_single_plane():
    lesions = {"hemorrhages": np.array([[1, 0]], bool), "redsmalldots": np.array([[0, 1]], bool)}
    planes = masks.class_planes(lesions, BINARY)
    assert planes.dtype == np.uint8
    assert planes.shape == (1, 2, 1) and planes[..., 0].tolist() == [[1, 0]]


def test_several_classes_get_background_and_exclusive_planes():
    lesions = {
        "hemorrhages": np.array([[1, 0, 0, 1]], bool),
        "redsmalldots": np.array([[0, 1, 0, 0]], bool),
        "hardexudates": np.array([[0, 0, 0, 1]], bool),
        "softexudates": np.array([[0, 0, 0, 0]], bool),
    }
    planes = masks.class_planes(lesions, MULTICLASS)
    assert planes.shape == (1, 4, len(MULTICLASS.plane_names))  # background, red, bright
    # Pixel 3 is both red and bright: the class listed first (red) keeps it.
    assert planes[0].tolist() == [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]
    assert (planes.sum(axis=-1) == 1).all()


def test_confidence_planes_take_the_strongest_member_and_leave_background_the_rest():
    confidence = {"hemorrhages": np.array([[0, 105, 252]], np.uint8),
                  "redsmalldots": np.array([[42, 63, 0]], np.uint8),
                  "hardexudates": np.array([[0, 210, 42]], np.uint8),
                  "softexudates": np.zeros((1, 3), np.uint8)}
    one = masks.confidence_planes(confidence, Task("red", {"red": ["hemorrhages", "redsmalldots"]}))
    assert one.shape == (1, 3, 1) and one[..., 0].tolist() == [[42, 105, 252]]
    several = masks.confidence_planes(confidence, MULTICLASS)
    # pixel 1: red 105 + bright 210 exceeds full scale, so bright keeps only the 150 left
    assert several[0].tolist() == [[213, 42, 0], [0, 105, 150], [0, 252, 3]]
    assert (several.astype(int).sum(axis=-1) == 255).all()
