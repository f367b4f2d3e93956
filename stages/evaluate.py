"""Stage evaluate@<variant>: predict the test split into data/predictions/<variant>, score it into metrics/eval/<variant>/."""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.evaluation.evaluate import evaluate_task
from retinaseg.tracking import mlflow_runs


def main(argv: list[str]) -> None:
    (variant,) = argv
    summary = evaluate_task(variant, prepared_dir=Path("data/prepared"), model_dir=Path("models") / variant,
                            run_path=Path("metrics/train") / variant / mlflow_runs.RUN_FILE,
                            predictions_dir=Path("data/predictions") / variant, out_dir=Path("metrics/eval") / variant,
                            params=params.load().evaluate)
    for name, scores in summary.by_class.items():
        core = scores["core"]
        print(f"evaluate {variant} {name} against the core: CPM {core['froc']['cpm']:.3f} "
              f"(sensitivity {core['froc']['sensitivity_at_1_fp']:.3f} at 1 FP/image), Dice {core['micro']['f1']:.3f}, "
              f"lesions found {core['lesion']['lesion_sensitivity']:.3f}, "
              f"FP components/image {core['lesion']['fp_components_per_image']:.2f}, "
              f"predicted {100 * core['predicted_fov_share']:.2f} % of the field of view "
              f"(core {100 * core['reference_fov_share']:.2f} %) on {summary.n_images} test images")


if __name__ == "__main__":
    stage.run(main)
