"""Stage transfer: train a task's U-Net starting from another task's trained model.

Writes models/<task>_transfer and metrics/train/<task>_transfer; trains with the same `train` block as the
from-scratch model of the task, so the two compare at the same epoch budget. Under
``train.distribute: multi_worker`` every other worker runs ``python stages/transfer.py <task>``
with its ``TF_CONFIG``, as stages/train.py says, and needs ``models/<transfer.init_from>`` and its ``metrics/train`` folder too.
"""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.training.fit import Outputs, train_task

#: Blocks recorded with the MLflow run, as written in params.yaml: everything that shaped the model.
LOGGED_BLOCKS = ("data", "prepare", "augment", "model", "train", "transfer")


def main(argv: list[str]) -> None:
    (task_name,) = argv
    everything = params.load()
    task, transfer = everything.task(task_name), everything.transfer
    variant = f"{task.name}_transfer"
    train_task(task, prepared_dir=Path("data/prepared"), augmented_dir=Path("data/augmented"),
               outputs=Outputs.of(variant),
               model_params=everything.model, train_params=everything.train,
               logged_params=params.as_written(LOGGED_BLOCKS, task.name), variant=variant,
               init_from=Outputs.of(transfer.init_from),
               freeze_encoder_epochs=transfer.freeze_encoder_epochs)


if __name__ == "__main__":
    stage.run(main)
