"""A full disk (ENOSPC) or used-up quota (EDQUOT) stops a stage with one line naming the output.

Nothing is half-written: the temporary sibling is deleted and an earlier output is kept.
The disk is filled by injecting the error into the writer, and once for real on a small
tmpfs mounted in a user namespace (skipped where ``unshare`` is not allowed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error

from retinaseg.core import atomic, stage
from retinaseg.core.atomic import atomic_path, save_npy, write_json
from retinaseg.core.errors import PipelineError
from retinaseg.core.params import PrepareParams
from retinaseg.core.tasks import Task
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.prepare.sets import prepare_dataset

TASK = Task("binary", {"hemorrhages": ("hemorrhages",)})
PARAMS = PrepareParams(threshold=0.1, core_threshold=0.75, image_size=64, crop_to_fundus=True, train_ids="1-3")
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _full(code: int = errno.ENOSPC, filename: str | Path | None = None) -> OSError:
    """The error a write on a full disk raises (``write()`` gives no file name, ``open()`` does)."""
    return OSError(code, os.strerror(code)) if filename is None else OSError(code, os.strerror(code), str(filename))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file and folder under ``root`` (hidden temporary ones included), with file contents."""
    return {path.relative_to(root).as_posix(): path.read_bytes() if path.is_file() else b"<dir>"
            for path in sorted(root.rglob("*"))}


# --- atomic_path ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_file_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path, code: int) -> None:
    target = tmp_path / "model.keras"
    target.write_text("old")

    def write() -> None:
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            handle.write(b"half")
            raise _full(code)

    message = one_line_error(write, f"{target}: {FULL[code]} while writing it", "partial output was deleted",
                             "free space", str(target))
    assert ".partial-" not in message
    assert _tree(tmp_path) == {"model.keras": b"old"}


def test_folder_write_on_a_full_disk_names_the_folder_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    (target / "train").mkdir(parents=True)
    (target / "train" / "images.npy").write_bytes(b"earlier output")
    before = _tree(tmp_path)

    def write() -> None:
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "train").mkdir()
            (tmp / "train" / "images.npy").write_bytes(b"half")
            raise _full(filename=tmp / "train" / "images.npy")

    message = one_line_error(write, f"{target}: no space left on device while writing train/images.npy",
                             f"free space on the disk that holds {target}")
    assert ".partial-" not in message
    assert _tree(tmp_path) == before


def test_nested_atomic_write_is_reported_under_the_outer_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_json`` into a folder being written: the message names the folder's final path, not its temp."""
    target = tmp_path / "prepared"

    def full_write_text(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with open(self, "w") as handle:
            handle.write(text[:10])
        raise _full()

    monkeypatch.setattr(Path, "write_text", full_write_text)

    def write() -> None:
        with atomic_path(target, is_dir=True) as tmp:
            write_json(tmp / "manifest.json", {"a": 1})

    message = one_line_error(write, f"{target}: no space left on device while writing manifest.json")
    assert ".partial-" not in message
    assert list(tmp_path.iterdir()) == []


def test_save_npy_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pred.npy"
    np.save(target, np.arange(3))
    before = _tree(tmp_path)

    def full_save(handle, array, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        handle.write(b"\x93NUMPY half")
        raise _full()

    monkeypatch.setattr(np, "save", full_save)
    one_line_error(lambda: save_npy(target, np.arange(10)), f"{target}: no space left on device while writing it")
    assert _tree(tmp_path) == before


def test_full_disk_before_the_temporary_folder_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def mkdtemp(*args: object, **kwargs: object) -> str:
        raise _full()

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", mkdtemp)

    def write() -> None:
        with atomic_path(tmp_path / "out", is_dir=True):
            raise AssertionError("not reached")

    one_line_error(write, f"{tmp_path / 'out'}: no space left on device while writing it")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_error_survives_pickling(tmp_path: Path) -> None:
    """As a worker process's exception would: same type, same one-line message."""
    with pytest.raises(PipelineError) as info:
        with atomic_path(tmp_path / "out", is_dir=True) as tmp:
            raise _full(filename=tmp / "a.npy")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value) and str(copy) == str(info.value)
    assert "while writing a.npy" in str(copy)


def test_other_os_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "out", is_dir=True):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_recognised_without_an_errno() -> None:
    """``shutil.copytree`` gathers per-file errors into one ``shutil.Error`` that has no errno."""
    gathered = shutil.Error([("src/a.png", "dst/a.png", "[Errno 28] No space left on device")])
    assert atomic.disk_full_reason(gathered) == "no space left on device"
    assert atomic.disk_full_reason(_full(errno.EDQUOT)) == "disk quota exceeded"
    assert atomic.disk_full_reason(shutil.Error([("a", "b", "[Errno 13] Permission denied")])) is None
    assert atomic.disk_full_reason(ValueError("No space left on device")) is None


# --- memory-mapped arrays ------------------------------------------------------------------


needs_fallocate = pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")


@needs_fallocate
def test_open_memmap_reserves_the_blocks_so_a_full_disk_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store into a mapped page the disk cannot back is SIGBUS, so the space is claimed when the file is made."""
    reserved: list[int] = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: reserved.append(length))
    array = atomic.open_memmap(tmp_path / "a.npy", np.uint8, (3, 8, 8))
    assert reserved == [(tmp_path / "a.npy").stat().st_size] and reserved[0] >= 3 * 8 * 8
    array[:] = 7
    array.flush()
    del array
    assert np.load(tmp_path / "a.npy").sum() == 7 * 3 * 8 * 8

    def full(fd: int, offset: int, length: int) -> None:
        raise _full()

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as info:
        atomic.open_memmap(tmp_path / "b.npy", np.uint8, (3, 8, 8))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "b.npy")


@needs_fallocate
def test_open_memmap_works_where_blocks_cannot_be_reserved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    array = atomic.open_memmap(tmp_path / "a.npy", np.uint8, (2, 4))
    array[:] = 1
    array.flush()
    del array
    assert np.load(tmp_path / "a.npy").tolist() == [[1] * 4] * 2


# --- prepare -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, num_images=6, size=(150, 116), seed=0, style="easy")
    return root


def _earlier_output(out: Path) -> dict[str, bytes]:
    (out / "train").mkdir(parents=True)
    (out / "train" / "images.npy").write_bytes(b"earlier output")
    (out / "manifest.json").write_text("{}")
    return _tree(out.parent)


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, where: str) -> str:
    """Make one of prepare's writes meet a full disk part-way; return the file the error should name."""
    if where == "third array":
        real_open_memmap, calls = np.lib.format.open_memmap, []

        def open_memmap(filename, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(filename)
            if len(calls) == 3:
                raise _full(filename=filename)
            return real_open_memmap(filename, *args, **kwargs)

        monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)
        return "train/core_binary.npy"
    if where == "ids":
        def save(file, array, *args, **kwargs):  # type: ignore[no-untyped-def]
            Path(file).write_bytes(b"\x93NUMPY half")
            raise _full()

        monkeypatch.setattr(np, "save", save)
        return "it"  # np.save's write() names no file
    assert where == "manifest"

    def write_text(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with open(self, "w") as handle:
            handle.write(text[:100])
        raise _full()

    monkeypatch.setattr(Path, "write_text", write_text)
    return "manifest.json"


@pytest.mark.parametrize("where", ["third array", "ids", "manifest"])
def test_prepare_on_a_full_disk_keeps_the_earlier_output(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "prepared"
    before = _earlier_output(out)
    written = _fill_disk_at(monkeypatch, where)
    message = one_line_error(lambda: prepare_dataset(raw, out, tasks=[TASK], params=PARAMS, workers=1),
                             f"{out}: no space left on device while writing {written}",
                             f"free space on the disk that holds {out}")
    assert ".partial-" not in message
    assert _tree(tmp_path) == before


def test_prepare_stage_prints_one_error_line(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prepared"
    before = _earlier_output(out)
    _fill_disk_at(monkeypatch, "manifest")
    with pytest.raises(SystemExit) as info:
        stage.run(lambda argv: prepare_dataset(raw, out, tasks=[TASK], params=PARAMS, workers=1))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {out}: no space left on device while writing manifest.json")
    assert _tree(tmp_path) == before


# --- a real full disk ----------------------------------------------------------------------


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


_REAL_STAGE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from retinaseg.core import stage
    from retinaseg.core.params import PrepareParams
    from retinaseg.prepare.sets import prepare_dataset
    from retinaseg.core.tasks import Task

    raw, disk = Path(sys.argv[1]), Path(sys.argv[2])
    (disk / "prepared" / "train").mkdir(parents=True)
    (disk / "prepared" / "train" / "images.npy").write_bytes(b"earlier output")
    params = PrepareParams(threshold=0.1, core_threshold=0.75, image_size=64, crop_to_fundus=True, train_ids="1-3")
    task = Task("binary", {"hemorrhages": ("hemorrhages",)})
    try:
        stage.run(lambda argv: prepare_dataset(raw, disk / "prepared", tasks=[task], params=params, workers=1))
        code = 0
    except SystemExit as exit:
        code = exit.code
    files = {str(p.relative_to(disk)): p.read_bytes().decode("latin-1") for p in sorted(disk.rglob("*")) if p.is_file()}
    print(json.dumps({"code": code, "files": files, "folders": sorted(str(p.relative_to(disk))
                                                                      for p in disk.rglob("*") if p.is_dir())}))
""")


@pytest.mark.skipif(not _unshare_works(), reason="cannot mount a small tmpfs in a user namespace here")
def test_prepare_on_a_really_full_disk(raw: Path, tmp_path: Path) -> None:
    """prepare into a 64 KiB tmpfs: the arrays (about 150 KB) do not fit.

    Before the blocks were reserved, the first store into a mapped page past the end of the
    disk killed the process with SIGBUS: no error line, and the temporary folder left behind.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "stage.py"
    script.write_text(_REAL_STAGE)
    shell = 'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" "$3" "$4" "$1"'
    # Output to files and a new session: a process killed by SIGBUS leaves its pool worker
    # waiting (and holding any pipe), so the whole session is ended once the stage is done.
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(["unshare", "-Urm", "sh", "-c", shell, "sh", str(disk), sys.executable,
                                    str(script), str(raw)], stdout=out, stderr=err, start_new_session=True)
        try:
            process.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    # The script catches the stage's exit and reports it; a signal (SIGBUS) shows here as a negative status.
    assert process.returncode == 0, f"exit status {process.returncode}: {stderr}"
    report = json.loads(stdout.splitlines()[-1])
    assert report["code"] == 1
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    written = r"(train|test)/\w+\.npy"
    expected = rf"error: {re.escape(str(disk))}/prepared: no space left on device while writing {written} "
    assert re.match(expected, line), line
    assert report["files"] == {"prepared/train/images.npy": "earlier output"}
    assert report["folders"] == ["prepared", "prepared/train"]
