"""The official DIARETDB1 v1.1 folder layout, shared by the loader and the synthetic generator."""

from __future__ import annotations

from pathlib import PurePosixPath

#: Lesion types with a ground-truth folder each, in the order the dataset lists them.
LESION_TYPES = ("hardexudates", "softexudates", "hemorrhages", "redsmalldots")

#: Number of images in DIARETDB1 v1.1 (image001 .. image089).
NUM_IMAGES = 89
#: Full resolution of every fundus image and map, as (width, height).
IMAGE_SIZE = (1500, 1152)
#: Ground-truth maps store summed annotator confidence in steps of this value (0 = none).
CONFIDENCE_STEP = 21

RESOURCES = PurePosixPath("resources")
IMAGES_DIR = RESOURCES / "images" / "ddb1_fundusimages"
GROUNDTRUTH_DIR = RESOURCES / "images" / "ddb1_groundtruth"
FUNDUS_MASK = RESOURCES / "images" / "ddb1_fundusmask" / "fmask.tif"
TRAIN_LIST = RESOURCES / "traindatasets" / "trainset.txt"
TEST_LIST = RESOURCES / "testdatasets" / "testset.txt"
#: The lesions a synthetic generator drew, beside the official layout (a real DIARETDB1 has no such file).
SIMULATED_TRUTH = PurePosixPath("simulated_truth.json")

#: Name of the official archive and the folder it unpacks to.
ARCHIVE_NAME = "diaretdb1_v_1_1.zip"
ARCHIVE_ROOT = "diaretdb1_v_1_1"


def image_name(image_id: int) -> str:
    """File name of image ``image_id`` (1-based), e.g. ``image007.png``."""
    return f"image{image_id:03d}.png"


def image_path(image_id: int) -> PurePosixPath:
    return IMAGES_DIR / image_name(image_id)


def groundtruth_path(lesion: str, image_id: int) -> PurePosixPath:
    return GROUNDTRUTH_DIR / lesion / image_name(image_id)
