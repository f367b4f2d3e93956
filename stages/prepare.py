"""Stage prepare: lesion maps -> binarised, resized class planes per task (data/prepared)."""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.prepare.sets import prepare_dataset


def main(argv: list[str]) -> None:
    everything = params.load()
    tasks = [everything.task(name) for name in everything.tasks]
    manifest = prepare_dataset(Path("data/raw"), Path("data/prepared"), tasks=tasks, params=everything.prepare)
    for task, info in manifest["tasks"].items():
        print(f"prepare {task}: lesion pixels {info['pixels']}, core pixels {info['core_pixels']}")


if __name__ == "__main__":
    stage.run(main)
