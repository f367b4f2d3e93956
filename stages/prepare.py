"""Stage prepare: lesion maps -> binarised, resized class planes per task (data/prepared)."""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.preprocess import prepare_dataset


def main(argv: list[str]) -> None:
    prepare, tasks = params.load("prepare"), params.load("tasks")
    manifest = prepare_dataset(Path("data/raw"), Path("data/prepared"), tasks=tasks,
                               threshold=prepare["threshold"],
                               core_threshold=prepare["core_threshold"], image_size=prepare["image_size"],
                               crop_to_fundus=prepare["crop_to_fundus"],
                               train_ids=params.train_ids(prepare["train_ids"]))
    for task, info in manifest["tasks"].items():
        print(f"prepare {task}: lesion pixels {info['pixels']}, core pixels {info['core_pixels']}")


if __name__ == "__main__":
    stage.run(main)
