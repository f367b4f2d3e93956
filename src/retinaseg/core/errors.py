"""One exception type for problems a user can fix (bad params, bad files)."""


class PipelineError(Exception):
    """A user-fixable problem; its message names the file or key and the fix.

    Stage scripts print it as a single line instead of a traceback.
    """


class Stopped(Exception):
    """A stage that was asked to stop (SIGTERM, SIGINT, its parent gone) and saved what it could.

    Stage scripts print its one-line message and exit with ``exit_code`` (128 + the signal's number).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
