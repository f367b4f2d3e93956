"""Read and validate ``params.yaml`` before any work starts.

Every stage validates the whole file (it is cheap) so that ``dvc repro`` stops at the
first stage with a message naming the bad key and its allowed values, then returns only
the block the stage declares in ``dvc.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from retinaseg.errors import PipelineError
from retinaseg.layout import LESION_TYPES, NUM_IMAGES

PARAMS_FILE = Path("params.yaml")
LOSSES = ("dice", "bce", "dice_bce", "weighted_bce", "cce", "weighted_cce")
#: Categorical losses need mutually exclusive planes, so at least two of them.
MULTICLASS_LOSSES = ("cce", "weighted_cce")


@dataclass(frozen=True)
class Rule:
    """One key: a check returning True when the value is acceptable, and its description."""

    check: Callable[[Any], bool]
    allowed: str


def _number(low: float, high: float, integer: bool = False) -> Rule:
    kind = int if integer else (int, float)
    word = "an integer" if integer else "a number"
    return Rule(lambda v: isinstance(v, kind) and not isinstance(v, bool) and low <= v <= high,
                f"{word} from {low} to {high}")


def _choice(*values: Any) -> Rule:
    return Rule(lambda v: v in values, " | ".join(map(str, values)))


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true | false")
SOURCE = Rule(lambda v: isinstance(v, str) and bool(v.strip()),
              "synthetic | diaretdb1 | a path to diaretdb1_v_1_1.zip or its extracted folder")
ZOOM = Rule(lambda v: isinstance(v, list) and len(v) == 2
            and all(isinstance(z, (int, float)) and 0.1 <= z <= 2 for z in v) and v[0] <= v[1],
            "[min, max] with 0.1 <= min <= max <= 2")
THRESHOLD = Rule(lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1),
                 "auto (best F1 against the core on the validation images) | a probability from 0 to 1")
TRAIN_IDS = Rule(lambda v: v == "official" or _parse_id_ranges(v) is not None,
                 f"'official' or id ranges such as '1-27' or '1-10,15' (ids 1..{NUM_IMAGES})")

SCHEMA: dict[str, dict[str, Rule]] = {
    "data": {
        "source": SOURCE,
        "seed": _number(0, 2**31 - 1, integer=True),
        "num_images": _number(2, NUM_IMAGES, integer=True),
        "image_width": _number(32, 6000, integer=True),
        "image_height": _number(32, 6000, integer=True),
        "synthetic": _choice("realistic", "easy"),
    },
    "prepare": {
        "threshold": _number(0.0, 1.0),
        "core_threshold": _number(0.0, 1.0),
        "image_size": _number(16, 2048, integer=True),
        "crop_to_fundus": BOOLEAN,
        "train_ids": TRAIN_IDS,
    },
    "augment": {
        "copies": _number(0, 100, integer=True),
        "seed": _number(0, 2**31 - 1, integer=True),
        "rotation_deg": _number(0, 180),
        "shift": _number(0, 0.5),
        "zoom": ZOOM,
        "shear_deg": _number(0, 45),
        "horizontal_flip": BOOLEAN,
        "vertical_flip": BOOLEAN,
        "brightness": _number(0, 0.99),
        "contrast": _number(0, 0.99),
    },
    "model": {
        "depth": _number(2, 6, integer=True),
        "base_filters": _number(1, 256, integer=True),
        "dropout": _number(0, 0.9),
        "batch_norm": BOOLEAN,
        "upsampling": _choice("transpose", "bilinear"),
    },
    "train": {
        "target": _choice("mask", "confidence"),
        "loss": _choice(*LOSSES),
        "lr": _number(1e-7, 1.0),
        "epochs": _number(1, 10000, integer=True),
        "batch_size": _number(1, 1024, integer=True),
        "seed": _number(0, 2**31 - 1, integer=True),
        "val_fraction": _number(0.0, 0.5),
        "mixed_precision": _choice("auto", "float32", "bfloat16"),
        "jit_compile": BOOLEAN,
        "threads": _number(0, 256, integer=True),
    },
    "transfer": {
        "init_from": Rule(lambda v: isinstance(v, str) and bool(v), "the name of a task in 'tasks'"),
        "freeze_encoder_epochs": _number(0, 10000, integer=True),
    },
    "evaluate": {
        "threshold": THRESHOLD,
        "threshold_beta": _number(0.1, 10.0),
        "n_overlays": _number(0, 100, integer=True),
        "min_component_px": _number(1, 100000, integer=True),
        "drop_on_optic_disc": BOOLEAN,
        "pr_thresholds": _number(2, 10001, integer=True),
    },
}


def load(block: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Validate the whole params file and return one block of it."""
    return validate(read(path), source=path)[block]


def read(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping of blocks {', '.join(SCHEMA)}, tasks")
    return params


def validate(params: dict[str, Any], source: Path = PARAMS_FILE) -> dict[str, Any]:
    """Check every block, key and value; raise PipelineError naming the first bad key."""
    expected = [*SCHEMA, "tasks"]
    for block in params:
        if block not in expected:
            raise PipelineError(f"{source}: unknown block '{block}'; allowed blocks: {', '.join(expected)}")
    for block, rules in SCHEMA.items():
        values = params.get(block)
        if not isinstance(values, dict):
            raise PipelineError(f"{source}: missing block '{block}' with keys {', '.join(rules)}")
        for key in values:
            if key not in rules:
                raise PipelineError(f"{source}: unknown key '{block}.{key}'; allowed keys: {', '.join(rules)}")
        for key, rule in rules.items():
            if key not in values:
                raise PipelineError(f"{source}: missing key '{block}.{key}' ({rule.allowed})")
            if not rule.check(values[key]):
                raise PipelineError(f"{source}: {block}.{key} = {values[key]!r} is not allowed; "
                                    f"expected {rule.allowed}")
    _validate_tasks(params.get("tasks"), source)
    _validate_combinations(params, source)
    return params


def _validate_tasks(tasks: Any, source: Path) -> None:
    if not isinstance(tasks, dict) or not tasks:
        raise PipelineError(f"{source}: 'tasks' must map task names to {{class: [lesion types]}}")
    for task, classes in tasks.items():
        if not isinstance(classes, dict) or not classes:
            raise PipelineError(f"{source}: tasks.{task} must map class names to lists of lesion types")
        for name, lesions in classes.items():
            if name == "background":
                raise PipelineError(f"{source}: tasks.{task}.background is reserved; "
                                    "the background plane is added automatically")
            if (not isinstance(lesions, list) or not lesions
                    or any(lesion not in LESION_TYPES for lesion in lesions)):
                raise PipelineError(f"{source}: tasks.{task}.{name} = {lesions!r}; expected a list of "
                                    f"lesion types from {', '.join(LESION_TYPES)}")


def _validate_combinations(params: dict[str, Any], source: Path) -> None:
    depth = params["model"]["depth"]
    size = params["prepare"]["image_size"]
    if size % 2**depth:
        raise PipelineError(f"{source}: prepare.image_size = {size} is not divisible by 2^model.depth = "
                            f"{2**depth}; choose a multiple of {2**depth} or a smaller model.depth")
    init_from = params["transfer"]["init_from"]
    if init_from not in params["tasks"]:
        raise PipelineError(f"{source}: transfer.init_from = {init_from!r} is not a task; "
                            f"expected one of {', '.join(params['tasks'])}")
    frozen, epochs = params["transfer"]["freeze_encoder_epochs"], params["train"]["epochs"]
    if frozen >= epochs:
        raise PipelineError(f"{source}: transfer.freeze_encoder_epochs = {frozen} leaves no epoch to train the "
                            f"encoder (train.epochs = {epochs}); choose fewer than {epochs}")
    loss = params["train"]["loss"]
    single_class = [task for task, classes in params["tasks"].items() if len(classes) == 1]
    if loss in MULTICLASS_LOSSES and single_class:
        allowed = " | ".join(name for name in LOSSES if name not in MULTICLASS_LOSSES)
        raise PipelineError(f"{source}: train.loss = {loss!r} needs several classes but task "
                            f"'{single_class[0]}' has one; allowed for it: {allowed}")


def _parse_id_ranges(text: Any) -> list[int] | None:
    """Parse '1-27' or '1-10,15' into sorted ids, or None when malformed or out of 1..89."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    ids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return None
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= NUM_IMAGES:
            return None
        ids.update(range(first, last + 1))
    return sorted(ids)


def train_ids(spec: str | int) -> list[int] | None:
    """The training ids a ``prepare.train_ids`` value names; None means the official split."""
    return None if spec == "official" else _parse_id_ranges(spec)


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
