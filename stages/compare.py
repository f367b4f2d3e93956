"""Stage compare: metrics/comparison.md and .png ranked by core CPM, and every FROC curve in metrics/froc.json."""

from pathlib import Path

from retinaseg.compare.report import (
    comparison_rows,
    figure,
    froc_rows,
    is_real_data,
    markdown,
    read_curve,
)
from retinaseg.core import params, stage
from retinaseg.core.atomic import atomic_path, write_json, write_text
from retinaseg.tracking import mlflow_runs

METRICS, MODELS, MANIFEST = Path("metrics"), Path("models"), Path("data/prepared/manifest.json")


def main(argv: list[str]) -> None:
    everything = params.load()
    variants, real_data = everything.variants, is_real_data(everything.data.source, MANIFEST)
    rows = comparison_rows(METRICS / "eval", METRICS / "train", MODELS, variants)
    table = markdown(rows, real_data)
    write_text(METRICS / "comparison.md", table)
    curves = {variant: read_curve(METRICS / "train" / variant / "train_curve.tsv") for variant in variants}
    froc = froc_rows(METRICS / "eval", variants)
    write_json(METRICS / "froc.json", froc)
    with atomic_path(METRICS / "comparison.png") as tmp:
        figure(rows, curves, froc, tmp, real_data)
    mlflow_runs.log_to_runs([METRICS / "train" / variant / mlflow_runs.RUN_FILE for variant in variants],
                         [METRICS / "comparison.md", METRICS / "comparison.png"], artifact_path="comparison")
    print(table)


if __name__ == "__main__":
    stage.run(main)
