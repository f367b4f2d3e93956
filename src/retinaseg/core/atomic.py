"""Write outputs so that a failing stage never leaves a half-written file or folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from retinaseg.core.errors import PipelineError

#: errno values that mean "the disk (or the user's share of it) is full", with their wording.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class DiskFull(PipelineError):
    """``path`` could not be written because its disk is full (or the quota is used up).

    ``written`` is the file being written when it happened (``path`` itself, or a file in
    the folder ``path``), if known. ``doing`` replaces the default "writing ..." wording.
    """

    def __init__(self, path: Path, reason: str, *, written: Path | None = None, doing: str | None = None):
        self.path, self.reason, self.written = Path(path), reason, written
        if doing is None:
            inside = _relative(written, self.path) if written is not None else None
            what = "it" if inside in (None, Path()) else inside.as_posix()
            doing = f"writing {what} (the partial output was deleted, any earlier version is unchanged)"
        self.doing = doing
        if reason == DISK_FULL[errno.EDQUOT]:
            fix = f"free space within your disk quota (or have it raised) where {self.path} lives and run again"
        else:
            fix = f"free space on the disk that holds {self.path} and run again"
        super().__init__(f"{self.path}: {reason} while {doing}; {fix}")

    def __reduce__(self) -> tuple:  # picklable, so that it can cross from a worker process
        return _rebuild_disk_full, (self.path, self.reason, self.written, self.doing)

    def moved(self, old: Path, new: Path) -> DiskFull | None:
        """The same error shown under ``new`` if it is about ``old`` or a file in it, else None."""
        inside = _relative(self.path, old)
        if inside is None:
            return None
        written = _relative(self.written, old) if self.written is not None else None
        return DiskFull(new, self.reason, written=new / (written if written is not None else inside))


def _rebuild_disk_full(path: Path, reason: str, written: Path | None, doing: str) -> DiskFull:
    return DiskFull(path, reason, written=written, doing=doing)


def disk_full_reason(error: BaseException) -> str | None:
    """The wording of ``DISK_FULL`` if ``error`` is a full disk or used-up quota, else None.

    Besides the errno, the text is checked: wrappers such as ``shutil.Error`` (which
    ``copytree`` raises for all its failed copies) carry the system message but no errno.
    """
    if not isinstance(error, OSError):
        return None
    if error.errno in DISK_FULL:
        return DISK_FULL[error.errno]
    text = str(error)
    return next((reason for code, reason in DISK_FULL.items() if os.strerror(code) in text), None)


@contextlib.contextmanager
def atomic_path(target: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file or folder is removed and ``target`` is left
    as it was, so DVC never sees a partial output. A full disk (``ENOSPC``, ``EDQUOT``)
    becomes a one-line ``DiskFull`` naming ``target`` rather than the temporary path.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name}.partial-"
        _remove_leftovers(target.parent, prefix)
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            tmp = target.parent / f"{prefix}{uuid.uuid4().hex}{target.suffix}"
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        tmp.replace(target)
    except BaseException as error:
        if tmp is not None:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        full = _disk_full(error, tmp, target)
        if full is None:
            raise
        raise full from error.__cause__ if isinstance(error, DiskFull) else error


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Temporary siblings that a killed process (SIGKILL, out of memory) left behind for the same target."""
    for leftover in folder.glob(f"{glob_escape(prefix)}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def open_memmap(path: str | Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file mapped for writing, with its disk blocks reserved up front.

    Storing into a mapped page that the disk cannot back kills the process with SIGBUS
    (no exception, no clean-up); reserving the blocks turns a full disk into an
    ``OSError`` (ENOSPC) here instead. On a filesystem that cannot reserve, this is
    plain ``numpy.lib.format.open_memmap``.
    """
    try:
        array = np.lib.format.open_memmap(path, "w+", dtype, shape)
        reserve = getattr(os, "posix_fallocate", None)
        if reserve is not None:
            with open(path, "r+b") as handle:
                try:
                    reserve(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
                except OSError as error:
                    if error.errno in DISK_FULL:
                        raise
                    # EOPNOTSUPP, EINVAL: the filesystem cannot reserve; write unreserved
    except OSError as error:
        if error.errno in DISK_FULL and error.filename is None:  # name the file, which write() does not
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    return array


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, payload: object) -> None:
    """Write JSON; NaN (undefined scores) becomes ``null``, since NaN is not valid JSON."""
    write_text(target, json.dumps(_nan_to_none(payload), indent=2, sort_keys=False) + "\n")


def save_npy(target: str | Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _disk_full(error: BaseException, tmp: Path | None, target: Path) -> DiskFull | None:
    """``error`` as a DiskFull about ``target`` if it is a full disk met while writing ``tmp``.

    A DiskFull about a path inside ``tmp`` (from a nested ``atomic_path``) is moved onto
    ``target``; one about another path is kept as it is (None).
    """
    if isinstance(error, DiskFull):
        return error.moved(tmp, target) if tmp is not None else None
    reason = disk_full_reason(error)
    if reason is None:
        return None
    filename = getattr(error, "filename", None)
    written = Path(os.fsdecode(filename)) if isinstance(filename, (str, bytes, os.PathLike)) else None
    if written is None:
        return DiskFull(target, reason)
    if tmp is not None and (inside := _relative(written, tmp)) is not None:
        return DiskFull(target, reason, written=target / inside)
    if _relative(written, target) is not None:
        return DiskFull(target, reason, written=written)
    return DiskFull(written, reason, doing="writing it")  # another file; an enclosing atomic_path may own it


def _relative(path: Path, root: Path) -> Path | None:
    """``path`` relative to ``root`` (``Path()`` for ``root`` itself), or None if outside it."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return None


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value
