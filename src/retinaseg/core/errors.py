"""One exception type for problems a user can fix (bad params, bad files), and the one way to quote a cause."""


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


def one_line(cause: BaseException | str, limit: int = 300) -> str:
    """A cause quoted inside a one-line error: its text with white space folded, cut at ``limit`` characters.

    Library errors (MLflow's, TensorFlow's, zipfile's) often span lines; the stages print one.
    """
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
