import json

import numpy as np
import pytest

from retinaseg.core.atomic import atomic_path, save_npy, write_json


def test_failure_leaves_previous_output_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "stale.npy").write_text("x")
    with atomic_path(target, is_dir=True) as tmp:
        save_npy(tmp / "a.npy", np.arange(3))
    assert sorted(p.name for p in target.iterdir()) == ["a.npy"]
    assert np.load(target / "a.npy").tolist() == [0, 1, 2]


def test_write_json_turns_nan_into_null(tmp_path):
    write_json(tmp_path / "m.json", {"dice": float("nan"), "rows": [1.0, float("nan")]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"dice": None, "rows": [1.0, None]}


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """SIGKILL skips every clean-up; the next write of the same target removes what it left."""
    from retinaseg.core.atomic import write_text

    left_file = tmp_path / ".eval.json.partial-0123abcd.json"
    left_dir = tmp_path / ".models.partial-x1y2"
    other = tmp_path / ".other.json.partial-99.json"
    for path in (left_file, other):
        path.write_text("half")
    left_dir.mkdir()
    (left_dir / "model.keras").write_text("half")
    write_text(tmp_path / "eval.json", "{}")
    with atomic_path(tmp_path / "models", is_dir=True) as tmp:
        (tmp / "run.json").write_text("{}")
    assert not left_file.exists() and not left_dir.exists(), "leftovers of the same targets are gone"
    assert other.exists(), "another target's temporary file is not touched"
    assert (tmp_path / "eval.json").read_text() == "{}" and (tmp_path / "models" / "run.json").exists()
