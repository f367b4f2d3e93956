"""Stage transfer: train a task's U-Net starting from another task's trained model.

Writes models/<task>_transfer and its curve; trains with the same `train` block as the
from-scratch model of the task, so the two compare at the same epoch budget.
"""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.errors import PipelineError
from retinaseg.training import train_task

#: Blocks recorded with the MLflow run: everything that shaped the model.
LOGGED_BLOCKS = ("data", "prepare", "augment", "model", "train", "transfer")


def main(argv: list[str]) -> None:
    (task,) = argv
    everything = params.validate(params.read())
    transfer = everything["transfer"]
    if transfer["init_from"] == task:
        raise PipelineError(f"params.yaml: transfer.init_from = {task!r} is the task being trained; "
                            "name another task")
    variant = f"{task}_transfer"
    logged = params.flatten({block: everything[block] for block in LOGGED_BLOCKS})
    logged.update(params.flatten({"task": {task: everything["tasks"][task]}}))
    train_task(task, prepared_dir=Path("data/prepared"), augmented_dir=Path("data/augmented"),
               model_dir=Path("models") / variant, curve_path=Path("metrics") / variant / "train_curve.tsv",
               model_params=everything["model"], train_params=everything["train"], logged_params=logged,
               variant=variant, init_dir=Path("models") / transfer["init_from"],
               freeze_encoder_epochs=transfer["freeze_encoder_epochs"])


if __name__ == "__main__":
    stage.run(main)
