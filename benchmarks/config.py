"""Fixed workloads of the full and the ``--tiny`` benchmark.

The workloads are constants rather than read from ``params.yaml``, so figures stay
comparable across commits that change the pipeline's settings; they copy the settings
of the pipeline and of the tutorial it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

from retinaseg.core.params import AugmentParams, ModelParams, PrepareParams, TrainParams
from retinaseg.core.tasks import Task


@dataclass(frozen=True)
class Net:
    """One U-Net configuration: depth and base filters, the rest as params.yaml's model block."""

    depth: int
    base_filters: int

    @property
    def label(self) -> str:
        return f"d{self.depth}/{self.base_filters}"

    @property
    def params(self) -> ModelParams:
        return ModelParams(depth=self.depth, base_filters=self.base_filters, dropout=0.5, batch_norm=True,
                           upsampling="transpose")


#: The tasks of params.yaml: the binary task trains the benchmarked one-plane models.
TASKS = [Task("binary", {"hemorrhages": ("hemorrhages",)}),
         Task("multiclass", {"red": ("hemorrhages", "redsmalldots"), "bright": ("hardexudates", "softexudates")})]
BINARY = TASKS[0]
#: The augment block of params.yaml, with one copy per image.
AUGMENT = AugmentParams(copies=1, seed=0, rotation_deg=20, shift=0.1, zoom=(0.7, 1.0), shear_deg=10,
                        horizontal_flip=True, vertical_flip=True, brightness=0.1, contrast=0.1)
#: What ``prepare.train_ids: 1-27`` names.
TRAIN_IDS = tuple(range(1, 28))


def prepare_params(image_size: int, train_ids: tuple[int, ...]) -> PrepareParams:
    """The prepare block of params.yaml at another image size and split."""
    ranges = ",".join(map(str, train_ids))
    return PrepareParams(threshold=0.1, core_threshold=0.75, image_size=image_size, crop_to_fundus=True,
                         train_ids=ranges)


def train_params(jit_compile: bool = False) -> TrainParams:
    """The train block the benchmarked steps compile with: the Dice loss of the tutorial, Adam 1e-3."""
    return TrainParams(target="mask", loss="dice", lr=1e-3, epochs=1, batch_size=1, seed=0, val_fraction=0.0,
                       mixed_precision="float32", jit_compile=jit_compile, threads=0)


@dataclass(frozen=True)
class Config:
    tiny: bool
    warmup: int                    # untimed repetitions before the timed ones
    reps: int                      # timed repetitions of every figure
    slow_reps: int                 # ... of figures taking seconds each: large-net steps, prepare, dvc repro
    matmul_seconds: float          # aimed duration of one matmul
    matmul_max_n: int
    image_size: int                # side of the training and inference images
    batch: int                     # train_step batch
    small_net: Net                 # tutorial depth 3
    large_net: Net                 # tutorial depth 4: the train-step target and the precision/XLA variants
    pipeline_net: Net              # params.yaml's model: input stall and inference
    pipeline_batch: int            # params.yaml's train.batch_size
    synthetic_images: int          # generated when data/prepared and data/augmented are absent
    synthetic_size: tuple[int, int]  # (width, height)
    synthetic_copies: int
    augment_images: int            # source images of the augmentation section
    prepare_images: int
    prepare_size: tuple[int, int]  # (width, height), DIARETDB1's full size
    prepare_train_ids: tuple[int, ...]
    inference_images: int
    full_size: tuple[int, int]     # (height, width) of full-resolution inference, multiples of 2^depth
    full_images: int
    full_seconds_budget: float     # full-resolution inference is skipped when predicted to take longer
    triad_min_mib: int             # memory-bandwidth arrays: at least this many MiB each ...
    triad_cache_multiple: int      # ... and this many times the last-level cache
    fit_images: int                # synthetic images of the pipeline's fit: the last for test, the rest training
    fit_copies: int                # augmented copies of each training image
    fit_epochs: int                # epochs of that fit; the first traces, the others are timed
    dvc: bool


FULL = Config(
    tiny=False, warmup=2, reps=5, slow_reps=3, matmul_seconds=0.5, matmul_max_n=16384,
    image_size=256, batch=4, small_net=Net(3, 32), large_net=Net(4, 64),
    pipeline_net=Net(4, 16), pipeline_batch=8,
    synthetic_images=12, synthetic_size=(750, 576), synthetic_copies=8, augment_images=27,
    prepare_images=89, prepare_size=(1500, 1152), prepare_train_ids=TRAIN_IDS,
    inference_images=16, full_size=(1152, 1504), full_images=2, full_seconds_budget=60.0,
    triad_min_mib=64, triad_cache_multiple=8, fit_images=5, fit_copies=7, fit_epochs=3, dvc=True,
)

TINY = Config(
    tiny=True, warmup=1, reps=1, slow_reps=1, matmul_seconds=0.005, matmul_max_n=256,
    image_size=32, batch=2, small_net=Net(2, 4), large_net=Net(2, 8),
    pipeline_net=Net(2, 4), pipeline_batch=2,
    synthetic_images=3, synthetic_size=(64, 48), synthetic_copies=1, augment_images=2,
    prepare_images=3, prepare_size=(64, 48), prepare_train_ids=(1, 2),
    inference_images=2, full_size=(48, 64), full_images=1, full_seconds_budget=30.0,
    triad_min_mib=4, triad_cache_multiple=0, fit_images=3, fit_copies=3, fit_epochs=2, dvc=False,
)
