"""Stage train@<task>: fit the U-Net of one task; writes models/<task> and metrics/train/<task>.

With ``train.distribute: multi_worker`` this process is one worker of a cluster that
``TF_CONFIG`` describes: run it as the chief (task 0) under ``dvc repro``, and on every other
machine, from the same checkout with the same data, start the same stage with that machine's
``TF_CONFIG``, e.g. ``TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task":
{"type": "worker", "index": 1}}' python stages/train.py binary``; the processes wait for one
another at the start, train in step, and only the chief writes (see ``retinaseg.training.distribute``).
"""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.training.fit import Outputs, train_task

#: Blocks recorded with the MLflow run, as written in params.yaml: everything that shaped the model.
LOGGED_BLOCKS = ("data", "prepare", "augment", "model", "train")


def main(argv: list[str]) -> None:
    (task_name,) = argv
    everything = params.load()
    task = everything.task(task_name)
    train_task(task, prepared_dir=Path("data/prepared"), augmented_dir=Path("data/augmented"),
               outputs=Outputs.of(task.name),
               model_params=everything.model, train_params=everything.train,
               logged_params=params.as_written(LOGGED_BLOCKS, task.name))


if __name__ == "__main__":
    stage.run(main)
