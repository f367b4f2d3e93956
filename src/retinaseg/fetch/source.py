"""Stage source: a fingerprint of ``data.source``, so DVC reruns fetch when a local copy changes.

DVC cannot declare a dependency whose path is a param that may also be a keyword
(``synthetic``), so this always-run stage writes what identifies the source's content into
``data/source.json``; fetch depends on that file. It is cheap: sizes and modification times,
as DVC's own state keeps them, not a hash of the content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from retinaseg.core.params import SOURCE_KEYWORDS


def fingerprint(source: str) -> dict[str, Any]:
    """What identifies the content of ``data.source``: the keyword, or the files of a local zip or folder."""
    if source in SOURCE_KEYWORDS:
        return {"source": source}
    path = Path(source).expanduser()
    if path.is_file():
        return {"source": source, "files": 1, "digest": _digest([_entry(path, path.name)])}
    if path.is_dir():
        files = sorted(item for item in path.rglob("*") if item.is_file())
        return {"source": source, "files": len(files),
                "digest": _digest([_entry(item, item.relative_to(path).as_posix()) for item in files])}
    return {"source": source, "missing": True}  # fetch names the problem


def _entry(path: Path, name: str) -> str:
    status = path.stat()
    return f"{name}\t{status.st_size}\t{status.st_mtime_ns}"


def _digest(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()
