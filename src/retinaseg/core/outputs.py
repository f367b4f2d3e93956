"""Typed models of the files that later stages read back: ``run.json`` (training) and ``eval.json`` (evaluation).

As ``params`` does for the inputs, each file's keys and their types are written once, here: the
stage that writes a file fills its model, and every reader takes attributes from the model
instead of string keys. A model writes the bytes the plain dicts it replaced wrote (the same keys
in the same order, the same numbers), so DVC sees unchanged outputs. A missing or malformed file
is a one-line ``PipelineError`` naming it and the stage that writes it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from retinaseg.core.atomic import write_json
from retinaseg.core.errors import PipelineError


class OutputFile(BaseModel):
    """A JSON file one stage writes and others read; ``FIX`` tells a user how to get a good one back."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    NAME: ClassVar[str]
    FIX: ClassVar[str]

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """The file at ``path``; a missing, unparsable or mistyped file is a one-line error."""
        path = Path(path)
        try:
            written = json.loads(path.read_text())
        except FileNotFoundError:
            raise PipelineError(f"{path}: missing; {cls.FIX}") from None
        except OSError as error:
            raise PipelineError(f"{path}: unreadable ({error.strerror or error}); {cls.FIX}") from None
        except ValueError as error:  # not JSON, or not UTF-8
            raise PipelineError(f"{path}: not valid JSON ({error}); {cls.FIX}") from None
        return cls.parse(written, path)

    @classmethod
    def parse(cls, written: Any, origin: str | Path) -> Self:
        """The model of a JSON value as the file holds it; errors name ``origin``."""
        try:
            return cls.model_validate(cls._fields(written))
        except ValueError as error:  # ValidationError is one
            problem = _first_problem(error) if isinstance(error, ValidationError) else str(error)
            raise PipelineError(f"{origin}: not a valid {cls.NAME} ({problem}); {cls.FIX}") from None

    @classmethod
    def _fields(cls, written: Any) -> Any:
        """The model's fields from the file's layout: the same, unless a subclass lays them out otherwise."""
        return written

    def as_written(self) -> dict[str, Any]:
        """The file's content: the fields given (or read), in the order they are declared."""
        return self.model_dump(exclude_unset=True)

    def write(self, path: str | Path) -> None:
        """All or nothing (``write_json``): a stage that fails leaves the earlier file for DVC to see."""
        write_json(path, self.as_written())


def _first_problem(error: ValidationError) -> str:
    """The first thing pydantic found wrong, as a few words naming the key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        return f"no key '{key}'"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if not key and first["type"] == "model_type":
        return "expected an object of keys"
    if first["type"] == "rule" or not key:
        return first["msg"]
    shown = repr(first["input"])
    return f"{key} = {shown if len(shown) <= 40 else shown[:37] + '...'}: {first['msg']}"


class RunRecord(OutputFile):
    """``models/<variant>/run.json``: what training decided that predicting and evaluating need.

    Every key is optional: run.json files of older trainings and the metadata MLflow keeps with a
    logged model (task, classes, image size, crop) hold fewer keys, and the loader (``model.trained``)
    guesses what predict needs from the model. Keys older trainings wrote beyond these are kept.
    """

    model_config = ConfigDict(extra="allow")
    NAME: ClassVar[str] = "run.json"
    FIX: ClassVar[str] = "retrain the model to write it again (`dvc repro train@<task>`, or `dvc repro transfer`)"

    variant: str | None = None
    task: str | None = None
    classes: list[str] | None = None  # the output planes: the one class, or background then the classes
    val_ids: list[int] | None = None  # the training images held out to choose the best epoch and the thresholds
    image_size: int | None = None
    crop_to_fundus: bool | None = None
    init_from: str | None = None  # "scratch" or the task whose model the weights came from
    frozen_encoder_epochs: int | None = None
    mixed_precision: str | None = None
    parameters: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None  # counted from 1
    best_val_dice: float | None = None  # the best epoch's Dice on the validation images, if there are any,
    best_dice: float | None = None  # else on the training rows


class ScoringRules(BaseModel):
    """How probabilities become the scored masks and curves, and where the thresholds came from.

    Declared once for both of their uses: eval.json records them (``EvalRecord`` holds these fields), and
    scoring applies them (``evaluation.score.Scoring`` adds what applying them takes).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    thresholds: dict[str, float]  # each lesion class's probability threshold
    threshold_source: Literal["validation", "params", "default", "argument"]
    operating_point: Literal["fp_per_image", "f_beta", "fixed"]
    target_fp_per_image: float | None
    max_area_ratio: float | None
    threshold_beta: float
    min_component_px: int
    drop_on_optic_disc: bool
    pr_thresholds: int

    def threshold_rule(self) -> str:
        """How the thresholds were set, in words."""
        if self.threshold_source == "validation":
            return (f"chosen per class on the validation images for evaluate.operating_point {self.operating_point}: "
                    + operating_point_rule(self.operating_point, self.target_fp_per_image, self.max_area_ratio,
                                           self.threshold_beta))
        return {"params": "fixed by evaluate.threshold in params.yaml",
                "default": "0.5, as the training held out no validation images to choose them on",
                "argument": "given to retinaseg-score (--threshold)"}[self.threshold_source]


def operating_point_rule(operating_point: str, target_fp_per_image: float | None, max_area_ratio: float | None,
                         threshold_beta: float) -> str:
    """What the threshold chosen for ``operating_point`` (``evaluate.operating_point``) achieves, in words."""
    if operating_point == "f_beta":
        return f"the best pixel F{threshold_beta:g} against the core"
    return (f"the most core lesions with at most {target_fp_per_image:g} false positives per image outside every "
            f"annotator's mark and at most {max_area_ratio:g}x the core's area")


class EvalRecord(ScoringRules, OutputFile):
    """``metrics/eval/<variant>/eval.json``: how a model was scored on the test images, and every figure.

    The file starts with ``variant`` and ``task``, then the rules (``ScoringRules``). Each lesion
    class's scores (``by_class``) are written at the top level under the class's name, between
    ``froc_rule`` and ``macro``; every other field is a key of its own, so no class may be
    named like one (``reserved_keys``). The figures stay plain dicts: ``evaluation.score`` says what they hold.
    """

    NAME: ClassVar[str] = "eval.json"
    FIX: ClassVar[str] = "rerun the evaluation that writes it (`dvc repro evaluate@<variant>`, or retinaseg-score)"

    variant: str
    task: str
    core_threshold: float
    n_images: int
    lesion_classes: list[str]
    froc_rule: str
    by_class: dict[str, dict[str, Any]]
    macro: dict[str, Any]
    micro: dict[str, Any]
    per_image: list[dict[str, Any]]

    @classmethod
    def reserved_keys(cls) -> tuple[str, ...]:
        """The top-level keys of eval.json that are not lesion classes."""
        return tuple(name for name in cls.model_fields if name != "by_class")

    @model_validator(mode="after")
    def _classes_match(self) -> Self:
        """Thresholds and scores for exactly the lesion classes, in their order, none named like a key of the file."""
        clashes = set(self.lesion_classes) & set(self.reserved_keys())
        if clashes:
            raise PydanticCustomError("rule", f"lesion class '{min(clashes)}' is named like a key of the file")
        for what, given in (("thresholds", self.thresholds), ("scores", self.by_class)):
            if list(given) != self.lesion_classes:
                raise PydanticCustomError("rule", f"{what} for {', '.join(given) or 'no class'} but lesion_classes "
                                                  f"{', '.join(self.lesion_classes) or 'empty'}")
        return self

    @classmethod
    def _fields(cls, written: Any) -> Any:
        """The file's top-level keys, with those named in ``lesion_classes`` gathered into ``by_class``."""
        if not isinstance(written, dict):
            return written  # pydantic says what it should be
        listed = written.get("lesion_classes")
        # Without a list of names, every other key goes to by_class and validation names lesion_classes.
        names = {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else None
        fields: dict[str, Any] = {"by_class": {}}
        for key, value in written.items():
            if key in cls.reserved_keys():
                fields[key] = value
            elif names is None or key in names:
                fields["by_class"][key] = value
            else:
                raise ValueError(f"unknown key {key!r}: neither a key of the file nor one of lesion_classes")
        return fields

    def as_written(self) -> dict[str, Any]:
        """The fields in file order: ``variant`` and ``task``, the rules, then the rest as declared, each lesion
        class's scores where ``by_class`` is."""
        fields = self.model_dump()
        written = {"variant": fields.pop("variant"), "task": fields.pop("task")}
        for key, value in fields.items():
            if key == "by_class":
                written.update(value)
            else:
                written[key] = value
        return written
