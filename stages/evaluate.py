"""Stage evaluate@<variant>: score the test split into metrics/<variant>/."""

from pathlib import Path

from retinaseg import params, stage
from retinaseg.evaluation import evaluate_task


def main(argv: list[str]) -> None:
    (variant,) = argv
    summary = evaluate_task(variant, prepared_dir=Path("data/prepared"), model_dir=Path("models") / variant,
                            out_dir=Path("metrics") / variant, params=params.load("evaluate"))
    for name in summary["lesion_classes"]:
        print(f"evaluate {variant} {name}: Dice {summary[name]['micro']['f1']:.3f}, "
              f"lesion sensitivity {summary[name]['lesion']['lesion_sensitivity']:.3f}, "
              f"AUC-PR {summary[name]['pr']['auc_pr']:.3f} on {summary['n_images']} test images")


if __name__ == "__main__":
    stage.run(main)
