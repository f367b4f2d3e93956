"""Stage train@<task>: fit the U-Net of one task; writes models/<task> and its curve."""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.training import train_task

#: Blocks recorded with the MLflow run: everything that shaped the model.
LOGGED_BLOCKS = ("data", "prepare", "augment", "model", "train")


def main(argv: list[str]) -> None:
    (task,) = argv
    everything = params.validate(params.read())
    logged = params.flatten({block: everything[block] for block in LOGGED_BLOCKS})
    logged.update(params.flatten({"task": {task: everything["tasks"][task]}}))
    train_task(task, prepared_dir=Path("data/prepared"), augmented_dir=Path("data/augmented"),
               model_dir=Path("models") / task, curve_path=Path("metrics") / task / "train_curve.tsv",
               model_params=everything["model"], train_params=everything["train"], logged_params=logged)


if __name__ == "__main__":
    stage.run(main)
