"""Stage compare: metrics/comparison.md, every task side by side."""

from pathlib import Path

from retinaseg import stage
from retinaseg.atomic import write_text
from retinaseg.comparison import comparison_rows, markdown


def main(argv: list[str]) -> None:
    rows = comparison_rows(Path("metrics"), Path("models"), tasks=argv)
    write_text(Path("metrics/comparison.md"), markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    stage.run(main)
