"""Read and validate ``params.yaml`` into one typed object before any work starts.

Every limit is written once, here, as a pydantic field; stages and library functions take
the typed blocks (``params.train.lr``). Every stage validates the whole file (it is cheap)
so that ``dvc repro`` stops at the first stage with one line naming the bad key and its
allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from retinaseg.errors import PipelineError
from retinaseg.layout import LESION_TYPES, NUM_IMAGES
from retinaseg.tasks import Task

PARAMS_FILE = Path("params.yaml")
LOSSES = ("dice", "bce", "dice_bce", "weighted_bce", "cce", "weighted_cce")
#: Categorical losses need mutually exclusive planes, so at least two of them.
MULTICLASS_LOSSES = ("cce", "weighted_cce")


def integer(low: int, high: int) -> Any:
    return Annotated[int, Field(ge=low, le=high, description=f"an integer from {low} to {high}")]


def number(low: float, high: float) -> Any:
    return Annotated[float, Field(ge=low, le=high, description=f"a number from {low} to {high}")]


def choice(*values: str) -> Any:
    return Annotated[Literal[values], Field(description=" | ".join(values))]


Boolean = Annotated[bool, Field(description="true | false")]
Seed = integer(0, 2**31 - 1)


def parse_id_ranges(text: Any) -> list[int] | None:
    """Parse '1-27' or '1-10,15' into sorted ids, or None when malformed or out of 1..89."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    ids: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            return None
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= NUM_IMAGES:
            return None
        ids.update(range(first, last + 1))
    return sorted(ids)


class Block(BaseModel):
    """A params block: unknown keys are errors, values are not coerced from other types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Block):
    source: Annotated[str, Field(min_length=1, pattern=r"\S", description=(
        "synthetic | diaretdb1 | a path to diaretdb1_v_1_1.zip or its extracted folder"))]
    seed: Seed
    num_images: integer(2, NUM_IMAGES)
    image_width: integer(32, 6000)
    image_height: integer(32, 6000)
    synthetic: choice("realistic", "easy")


class PrepareParams(Block):
    threshold: number(0.0, 1.0)
    core_threshold: number(0.0, 1.0)
    image_size: integer(16, 2048)
    crop_to_fundus: Boolean
    train_ids: Annotated[str | int, Field(description=(
        f"'official' or id ranges such as '1-27' or '1-10,15' (ids 1..{NUM_IMAGES})"))]

    @field_validator("train_ids")
    @classmethod
    def _ranges(cls, value: str | int) -> str | int:
        if value != "official" and parse_id_ranges(value) is None:
            raise ValueError("not id ranges")
        return value

    @property
    def train_id_list(self) -> list[int] | None:
        """The training ids ``train_ids`` names; None means the official split."""
        return None if self.train_ids == "official" else parse_id_ranges(self.train_ids)


class AugmentParams(Block):
    copies: integer(0, 100)
    seed: Seed
    rotation_deg: number(0, 180)
    shift: number(0, 0.5)
    zoom: Annotated[tuple[float, float], Field(description="[min, max] with 0.1 <= min <= max <= 2")]
    shear_deg: number(0, 45)
    horizontal_flip: Boolean
    vertical_flip: Boolean
    brightness: number(0, 0.99)
    contrast: number(0, 0.99)

    @field_validator("zoom", mode="before")
    @classmethod
    def _zoom(cls, value: Any) -> tuple[float, float]:
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(z, (int, float)) and not isinstance(z, bool) and 0.1 <= z <= 2 for z in value)
                and value[0] <= value[1]):
            raise ValueError("not a zoom range")
        return float(value[0]), float(value[1])


class ModelParams(Block):
    depth: integer(2, 6)
    base_filters: integer(1, 256)
    dropout: number(0, 0.9)
    batch_norm: Boolean
    upsampling: choice("transpose", "bilinear")


class TrainParams(Block):
    target: choice("mask", "confidence")
    loss: choice(*LOSSES)
    lr: number(1e-7, 1.0)
    epochs: integer(1, 10000)
    batch_size: integer(1, 1024)
    seed: Seed
    val_fraction: number(0.0, 0.5)
    mixed_precision: choice("auto", "float32", "bfloat16")
    jit_compile: Boolean
    threads: integer(0, 256)


class TransferParams(Block):
    init_from: Annotated[str, Field(min_length=1, description="the name of a task in 'tasks'")]
    freeze_encoder_epochs: integer(0, 10000)


class EvaluateParams(Block):
    threshold: Annotated[Literal["auto"] | Annotated[float, Field(ge=0, le=1)], Field(
        description="auto (best F-beta against the core on the validation images) | a probability from 0 to 1")]
    threshold_beta: number(0.1, 10.0)
    n_overlays: integer(0, 100)
    min_component_px: integer(1, 100000)
    drop_on_optic_disc: Boolean
    pr_thresholds: integer(2, 10001)


class Params(Block):
    """The whole ``params.yaml``; ``tasks`` maps task -> class -> lesion types."""

    data: DataParams
    tasks: dict[str, dict[str, tuple[str, ...]]]
    prepare: PrepareParams
    augment: AugmentParams
    model: ModelParams
    train: TrainParams
    transfer: TransferParams
    evaluate: EvaluateParams

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, tasks: Any) -> dict[str, dict[str, tuple[str, ...]]]:
        if not isinstance(tasks, dict) or not tasks:
            raise PydanticCustomError("rule", "'tasks' must map task names to {class: [lesion types]}")
        for task, classes in tasks.items():
            if not isinstance(classes, dict) or not classes:
                raise PydanticCustomError("rule", f"tasks.{task} must map class names to lists of lesion types")
            for name, lesions in classes.items():
                if name == "background":
                    raise PydanticCustomError("rule", f"tasks.{task}.background is reserved; "
                                                      "the background plane is added automatically")
                if (not isinstance(lesions, list) or not lesions
                        or any(lesion not in LESION_TYPES for lesion in lesions)):
                    raise PydanticCustomError("rule", f"tasks.{task}.{name} = {lesions!r}; expected a list of "
                                                      f"lesion types from {', '.join(LESION_TYPES)}")
        return {task: {name: tuple(lesions) for name, lesions in classes.items()} for task, classes in tasks.items()}

    @model_validator(mode="after")
    def _combinations(self) -> Params:
        depth, size = self.model.depth, self.prepare.image_size
        if size % 2**depth:
            raise PydanticCustomError("rule", f"prepare.image_size = {size} is not divisible by 2^model.depth = "
                                              f"{2**depth}; choose a multiple of {2**depth} or a smaller model.depth")
        if self.transfer.init_from not in self.tasks:
            raise PydanticCustomError("rule", f"transfer.init_from = {self.transfer.init_from!r} is not a task; "
                                              f"expected one of {', '.join(self.tasks)}")
        frozen, epochs = self.transfer.freeze_encoder_epochs, self.train.epochs
        if frozen >= epochs:
            raise PydanticCustomError("rule", f"transfer.freeze_encoder_epochs = {frozen} leaves no epoch to train "
                                              f"the encoder (train.epochs = {epochs}); choose fewer than {epochs}")
        single_class = [task for task, classes in self.tasks.items() if len(classes) == 1]
        if self.train.loss in MULTICLASS_LOSSES and single_class:
            allowed = " | ".join(name for name in LOSSES if name not in MULTICLASS_LOSSES)
            raise PydanticCustomError("rule", f"train.loss = {self.train.loss!r} needs several classes but task "
                                              f"'{single_class[0]}' has one; allowed for it: {allowed}")
        return self

    def task(self, name: str) -> Task:
        """The task ``name`` of ``tasks``; an unknown name is an error naming the known ones."""
        if name not in self.tasks:
            raise PipelineError(f"params.yaml: no task {name!r} under 'tasks'; known tasks: {', '.join(self.tasks)}")
        return Task(name, self.tasks[name])


BLOCKS = tuple(Params.model_fields)


def load(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    return validate(read(path), source=path)


def read(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file as plain YAML values, as ``dvc params diff`` shows them."""
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping of blocks {', '.join(BLOCKS)}")
    return params


def validate(params: dict[str, Any], source: Path = PARAMS_FILE) -> Params:
    """The typed params; raise PipelineError naming the first bad block, key or combination."""
    try:
        return Params.model_validate(params)
    except ValidationError as error:
        raise PipelineError(f"{source}: {_describe(error.errors()[0], params)}") from None


def _describe(error: dict[str, Any], params: dict[str, Any]) -> str:
    """One pydantic error as the one line a user can act on."""
    location = [str(part) for part in error["loc"]]
    if error["type"] == "rule" or not location:
        return error["msg"]
    block = location[0]
    if block == "tasks":
        if error["type"] == "missing":
            return "missing block 'tasks' mapping task names to {class: [lesion types]}"
        name = ".".join(part for part in location[1:] if part != "[key]")
        return (f"tasks.{name}: a task or class name must be text (YAML reads 1, yes and on as numbers or "
                "booleans); quote it or choose a word, e.g. binary: {hemorrhages: [hemorrhages]}")
    if len(location) == 1:
        if error["type"] == "extra_forbidden":
            return f"unknown block '{block}'; allowed blocks: {', '.join(BLOCKS)}"
        keys = ", ".join(Params.model_fields[block].annotation.model_fields)
        return f"missing block '{block}' with keys {keys}" if error["type"] == "missing" else \
            f"'{block}' must be a mapping with keys {keys}"
    key = location[1]
    fields = Params.model_fields[block].annotation.model_fields
    name = f"{block}.{key}"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{name}'; allowed keys: {', '.join(fields)}"
    allowed = fields[key].description
    if error["type"] == "missing":
        return f"missing key '{name}' ({allowed})"
    return f"{name} = {params[block][key]!r} is not allowed; expected {allowed}"


def as_written(blocks: tuple[str, ...], task: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The given blocks and one task's classes, flattened, with values as params.yaml writes them.

    MLflow then records ``20``, not the ``20.0`` a typed float field would hold, as ``dvc params diff`` shows it.
    """
    written = read(path)
    return flatten({**{block: written[block] for block in blocks}, "task": {task: written["tasks"][task]}})


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into dotted keys, as MLflow and ``dvc params diff`` show them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
