"""Stage source (always run): data/source.json identifies data.source's content for the fetch stage."""

from pathlib import Path

from retinaseg.core import params, stage
from retinaseg.core.atomic import write_json
from retinaseg.fetch.source import fingerprint


def main(argv: list[str]) -> None:
    write_json(Path("data/source.json"), fingerprint(params.load().data.source))


if __name__ == "__main__":
    stage.run(main)
