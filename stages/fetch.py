"""Stage fetch: put DIARETDB1 (or its synthetic stand-in) at data/raw in the official layout."""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.fetch.download import fetch_dataset


def main(argv: list[str]) -> None:
    fetch_dataset(params.load().data, Path("data/raw"), cache_dir=Path("data/downloads"))


if __name__ == "__main__":
    stage.run(main)
