"""The suite runs on two pytest-xdist workers (``--dist loadgroup``, see pyproject.toml).

Each test file stays on one worker, so its module-scoped fixtures are built once, and every
test that uses the reproduced pipeline goes to the same worker, so the session fixture that
runs ``dvc repro`` is built once.
"""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = "reproduced" if "reproduced" in item.fixturenames else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))
