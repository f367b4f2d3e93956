"""Stage fetch: put DIARETDB1 (or its synthetic stand-in) at data/raw in the official layout."""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.download import fetch_dataset


def main(argv: list[str]) -> None:
    data = params.load("data")
    fetch_dataset(data["source"], Path("data/raw"), cache_dir=Path("data/downloads"), seed=data["seed"],
                  num_images=data["num_images"], size=(data["image_width"], data["image_height"]),
                  style=data["synthetic"])


if __name__ == "__main__":
    stage.run(main)
