"""Entry-point wrapper for ``stages/*.py``: user-fixable errors print as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from retinaseg.errors import PipelineError
from retinaseg.hardware import quiet_tensorflow


def run(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main(argv)``; a PipelineError exits 1 with ``error: <message>``."""
    quiet_tensorflow()
    try:
        main(sys.argv[1:])
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
