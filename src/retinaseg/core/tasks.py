"""The one convention of a segmentation task, which every module asks instead of re-deriving it.

A task with one class has one plane and a sigmoid output (binary). A task with several
classes gets a background plane first, then one plane per class, and a softmax output
(multiclass): the planes are mutually exclusive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BACKGROUND = "background"


def lesion_planes(num_planes: int) -> list[int]:
    """Indices of the lesion planes among ``num_planes`` output planes: the only one, or all after background.

    For code that sees only an array, such as a loss or a post-processing step.
    """
    return list(range(1, num_planes)) if num_planes > 1 else [0]


@dataclass(frozen=True)
class Task:
    """A task's name and classes (class -> DIARETDB1 lesion types merged into it)."""

    name: str
    classes: Mapping[str, Sequence[str]] = field(hash=False)

    @classmethod
    def from_planes(cls, name: str, plane_names: Sequence[str]) -> Task:
        """The task behind a model's plane names (as run.json stores them), lesion types unknown."""
        classes = list(plane_names) if len(plane_names) == 1 else list(plane_names[1:])
        return cls(name, {class_name: () for class_name in classes})

    @property
    def is_multiclass(self) -> bool:
        return len(self.classes) > 1

    @property
    def kind(self) -> str:
        """The output kind: ``binary`` (one sigmoid plane) or ``multiclass`` (softmax over planes)."""
        return "multiclass" if self.is_multiclass else "binary"

    @property
    def activation(self) -> str:
        return "softmax" if self.is_multiclass else "sigmoid"

    @property
    def plane_names(self) -> list[str]:
        """Names of the output planes: the one class, or background followed by the classes."""
        return [BACKGROUND, *self.classes] if self.is_multiclass else list(self.classes)

    @property
    def num_planes(self) -> int:
        return len(self.plane_names)

    @property
    def lesion_planes(self) -> list[int]:
        return lesion_planes(self.num_planes)

    @property
    def lesion_names(self) -> list[str]:
        return list(self.classes)
