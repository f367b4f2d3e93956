"""One exception type for problems a user can fix (bad params, bad files)."""


class PipelineError(Exception):
    """A user-fixable problem; its message names the file or key and the fix.

    Stage scripts print it as a single line instead of a traceback.
    """
