"""Assertions shared by several test modules."""

import pytest

from retinaseg.errors import PipelineError


def one_line_error(call, *fragments: str) -> str:
    """Run ``call``; assert it raises a single-line PipelineError containing every fragment."""
    with pytest.raises(PipelineError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message
