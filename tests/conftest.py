"""Fixtures shared by the test files, and the order in which the two pytest-xdist workers take the files.

The suite runs on two workers (``-n 2 --dist loadfile``, pyproject.toml): each file goes
whole to one worker, so its module fixtures are built once.
"""

import shutil
from itertools import zip_longest

import pytest
from filelock import FileLock
from project import commit, run, tiny_project


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, worker_id):
    """The project copied into a fresh git repo, reproduced once on tiny data and committed. Read only.

    Built once for the whole run: the first worker that needs it builds it under a lock, in the
    folder the workers share, and the other one waits for it.
    """
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    repo, done = shared / "reproduced" / "project", shared / "reproduced.done"
    with FileLock(shared / "reproduced.lock"):
        if not done.exists():
            shutil.rmtree(repo.parent, ignore_errors=True)
            tiny_project(repo)
            repo.joinpath("first_repro.log").write_text(run(["dvc", "repro"], repo).stdout)
            commit(repo, "reproduced")
            done.touch()
    return repo


@pytest.fixture
def workspace(reproduced, tmp_path):
    """A private copy of the reproduced project (git history, DVC cache and MLflow store included)."""
    copy = tmp_path / "project"
    shutil.copytree(reproduced, copy, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return copy


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Slow files first, alternating those that need the reproduced pipeline with the others.

    Each worker starts with two files, so one builds the pipeline while the other runs slow
    work of its own instead of waiting for it; the random order stays within each kind.
    """
    files = list(dict.fromkeys(item.path for item in items))
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    needs_pipeline = {item.path for item in items if "reproduced" in item.fixturenames}
    pipeline_files = [path for path in files if path in needs_pipeline]
    other_slow = [path for path in files if path in slow and path not in needs_pipeline]
    order = [path for pair in zip_longest(pipeline_files, other_slow) for path in pair if path is not None]
    rank = {path: index for index, path in enumerate(order)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))
