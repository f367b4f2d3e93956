"""Stage evaluate@<task>: score the test split into metrics/<task>/eval.json."""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.evaluation import evaluate_task


def main(argv: list[str]) -> None:
    (task,) = argv
    summary = evaluate_task(task, prepared_dir=Path("data/prepared"), model_dir=Path("models") / task,
                            eval_path=Path("metrics") / task / "eval.json",
                            overlay_dir=Path("metrics") / task / "overlays", params=params.load("evaluate"))
    print(f"evaluate {task}: macro Dice {summary['macro']['f1']:.3f} on {summary['n_images']} test images")


if __name__ == "__main__":
    stage.run(main)
