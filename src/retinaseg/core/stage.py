"""Entry-point wrapper for ``stages/*.py``: user-fixable errors print as one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from retinaseg.core.errors import PipelineError, Stopped


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter so stage output stays readable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# At import: stage scripts import this module before the modules that import TensorFlow.
quiet_tensorflow()


def run(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main(argv)``; a PipelineError exits 1 with ``error: <message>``, a Stopped stage with
    its own line and exit code."""
    quiet_tensorflow()
    try:
        main(sys.argv[1:])
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
