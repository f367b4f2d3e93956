"""Stage augment: a seeded, augmented copy of the prepared training set (data/augmented)."""

from pathlib import Path

from retinaseg.augment.warps import augment_training_set
from retinaseg.core import params, stage


def main(argv: list[str]) -> None:
    rows = augment_training_set(Path("data/prepared"), Path("data/augmented"), params.load().augment)
    print(f"augment: {rows} training rows written to data/augmented")


if __name__ == "__main__":
    stage.run(main)
