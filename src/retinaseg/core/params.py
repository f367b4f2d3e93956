"""Read and validate ``params.yaml`` into one typed object before any work starts.

Every limit is written once, here, as a pydantic field; stages and library functions take
the typed blocks (``params.train.lr``). Every stage validates the whole file (it is cheap)
so that ``dvc repro`` stops at the first stage with one line naming the bad key and its
allowed values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from retinaseg.core.errors import PipelineError
from retinaseg.core.layout import LESION_TYPES, NUM_IMAGES
from retinaseg.core.outputs import EvalRecord
from retinaseg.core.tasks import Task

PARAMS_FILE = Path("params.yaml")
#: Values of ``data.source`` that are not a path: the generated data and the official download.
SOURCE_KEYWORDS = ("synthetic", "diaretdb1")
LOSSES = ("dice", "bce", "dice_bce", "weighted_bce", "cce", "weighted_cce")
#: Categorical losses need mutually exclusive planes, so at least two of them.
MULTICLASS_LOSSES = ("cce", "weighted_cce")
#: Task and class names become file and stage names (masks_<task>.npy, pr_curves/<class>.json, train@<task>).
SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
#: The numeric floats of ruamel's YAML 1.2 resolver, which DVC reads params with. YAML 1.1 reads some of them
#: as text: those without a dot (1e-4, 1E+3), with an unsigned exponent (1.0e4) or a signed leading dot (-.5).
YAML12_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                                |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                                |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?)$""", re.X)
MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping key written twice, where PyYAML would silently keep the last value."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does and refusing a key written twice.

    YAML 1.1 needs a dot and a signed exponent (``1.0e-4``): ``lr: 1e-4``, as papers write it, and the
    ``lr: 1e-05`` that ``dvc exp run -S train.lr=1e-5`` writes would be text. DVC reads params.yaml with
    ruamel (YAML 1.2), which reads both as floats and refuses duplicate keys too.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


# Appended after PyYAML's own resolvers, so every value YAML 1.1 already reads keeps its type.
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def _refuse_duplicate_keys(node: yaml.Node, name: str, checked: set[int]) -> None:
    """Raise DuplicateKeyError naming the first key written twice in a mapping at or under ``node``."""
    if id(node) in checked:  # an alias of a node already checked
        return
    checked.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{name}[{index}]", checked)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key, line = f"{name}.{key_node.value}" if name else key_node.value, key_node.start_mark.line + 1
            if (key_node.tag, key_node.value) in lines:
                first = lines[key_node.tag, key_node.value]
                raise DuplicateKeyError(f"{'key' if name else 'block'} '{key}' is written twice, on lines {first} "
                                        f"and {line}; keep one (YAML would silently use the last)")
            lines[key_node.tag, key_node.value] = line
            _refuse_duplicate_keys(value_node, key, checked)


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
    sha256: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$", description=(
        "null or the 64 lower-case hex digits of the archive's sha256, as fetch prints them"))] = None


class PrepareParams(Block):
    threshold: Annotated[float, Field(gt=0, le=1, description=(
        "a number above 0 up to 1 (at 0 every pixel would be a lesion)"))]
    core_threshold: Annotated[float, Field(gt=0, le=1, description=(
        "a number above 0 up to 1 (at 0 every pixel would be core)"))]
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
    # Defaults: blocks built in code before these keys existed train on one device, as they did.
    distribute: choice("none", "mirrored", "multi_worker") = "none"
    cpu_devices: integer(1, 64) = 2


class TransferParams(Block):
    task: Annotated[str, Field(min_length=1, description="the name of a task in 'tasks'")]
    init_from: Annotated[str, Field(min_length=1, description="the name of a task in 'tasks'")]
    freeze_encoder_epochs: integer(0, 10000)


class EvaluateParams(Block):
    threshold: Annotated[Literal["auto"] | Annotated[float, Field(ge=0, le=1)], Field(
        description="auto (chosen on the validation images for evaluate.operating_point) | a probability from 0 to 1")]
    operating_point: choice("fp_per_image", "f_beta")
    target_fp_per_image: number(0.0, 100.0)
    max_area_ratio: number(0.1, 1000.0)
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
            _check_name(f"tasks.{_shown(task)}", task, "a task name names files and stages (masks_<task>.npy, "
                                                        "train@<task>)")
            if not isinstance(classes, dict) or not classes:
                raise PydanticCustomError("rule", f"tasks.{task} must map class names to lists of lesion types")
            for name, lesions in classes.items():
                _check_class(task, name, lesions)
        return {task: {name: tuple(lesions) for name, lesions in classes.items()} for task, classes in tasks.items()}

    @model_validator(mode="after")
    def _combinations(self) -> Params:
        depth, size = self.model.depth, self.prepare.image_size
        if size % 2**depth:
            raise PydanticCustomError("rule", f"prepare.image_size = {size} is not divisible by 2^model.depth = "
                                              f"{2**depth}; choose a multiple of {2**depth} or a smaller model.depth")
        for key in ("task", "init_from"):
            if getattr(self.transfer, key) not in self.tasks:
                raise PydanticCustomError("rule", f"transfer.{key} = {getattr(self.transfer, key)!r} is not a task; "
                                                  f"expected one of {', '.join(self.tasks)}")
        if self.transfer.task == self.transfer.init_from:
            raise PydanticCustomError("rule", f"transfer.init_from = {self.transfer.init_from!r} is transfer.task, "
                                              "the task being trained; name another task")
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

    @property
    def variants(self) -> list[str]:
        """Every trained model: one per task from scratch, then the transferred one."""
        return [*self.tasks, f"{self.transfer.task}_transfer"]

    def task(self, name: str) -> Task:
        """The task ``name`` of ``tasks``; an unknown name is an error naming the known ones."""
        if name not in self.tasks:
            raise PipelineError(f"params.yaml: no task {name!r} under 'tasks'; known tasks: {', '.join(self.tasks)}")
        return Task(name, self.tasks[name])


def _shown(name: Any) -> str:
    """A name as an error message shows it: quoted when it is empty, has edge spaces or is unprintable."""
    return name if isinstance(name, str) and name.isprintable() and name.strip() == name != "" else repr(name)


def _check_name(key: str, name: Any, use: str) -> None:
    """A task or class name must be safe as a file name; a name YAML reads as no text is left to the type check."""
    if isinstance(name, str) and not SAFE_NAME.fullmatch(name):
        raise PydanticCustomError("rule", f"{key}: {use}, so use letters, digits, _ and -, starting with a letter, "
                                          "at most 40 characters")


def _check_class(task: str, name: Any, lesions: Any) -> None:
    """One class of a task: a safe name, not reserved, mapping to a list of known lesion types."""
    key = f"tasks.{_shown(task)}.{_shown(name)}"
    if name == "background":
        raise PydanticCustomError("rule", f"{key} is reserved; the background plane is added automatically")
    _check_name(key, name, "a class name names files (pr_curves/<class>.json)")
    if name in EvalRecord.reserved_keys():
        raise PydanticCustomError("rule", f"{key}: eval.json writes each class's scores under its name beside "
                                          f"its own key '{name}', so choose another class name")
    if not isinstance(lesions, list) or not lesions or any(lesion not in LESION_TYPES for lesion in lesions):
        raise PydanticCustomError("rule", f"{key} = {lesions!r}; expected a list of "
                                          f"lesion types from {', '.join(LESION_TYPES)}")


BLOCKS = tuple(Params.model_fields)


def load(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    return validate(read(path), path=path)


def read(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file as plain YAML values, as ``dvc params diff`` shows them (see ParamsLoader)."""
    try:
        params = yaml.load(path.read_text(), Loader=ParamsLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the project root") from None
    except DuplicateKeyError as error:
        raise PipelineError(f"{path}: {error}".replace("\n", " ")) from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping of blocks {', '.join(BLOCKS)}")
    return params


def validate(params: dict[str, Any], path: Path = PARAMS_FILE) -> Params:
    """The typed params; raise PipelineError naming the first bad block, key or combination."""
    try:
        return Params.model_validate(params)
    except ValidationError as error:
        raise PipelineError(f"{path}: {_describe(error.errors()[0], params)}") from None


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
