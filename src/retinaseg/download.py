"""Fetch stage: put DIARETDB1 (downloaded, local, or synthetic) into one validated folder.

Downloads resume and retry because the official server is slow and far away; every
failure ends in a one-line PipelineError that says how to place the archive by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from retinaseg import layout
from retinaseg.atomic import atomic_path
from retinaseg.dataset import DiaretDB1
from retinaseg.errors import PipelineError
from retinaseg.params import DataParams
from retinaseg.synthetic import generate

PAGE_URL = "http://www.it.lut.fi/project/imageret/diaretdb1/"
ARCHIVE_URL = PAGE_URL + layout.ARCHIVE_NAME
# Size and sha256 of the official zip, recorded once known; until then a download
# is not verified and logs both values so they can be filled in here.
ARCHIVE_SIZE: int | None = None
ARCHIVE_SHA256: str | None = None

#: Keywords accepted by data.source besides a path to a zip file or folder.
SOURCES = ("synthetic", "diaretdb1")

_CHUNK = 1 << 20
_BY_HAND = (
    f"download {layout.ARCHIVE_NAME} in a browser from {PAGE_URL} and set data.source "
    "in params.yaml to the zip file or the extracted folder"
)

logger = logging.getLogger(__name__)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60,
    progress: bool = True,
) -> None:
    """Stream ``url`` into ``dest`` through ``dest.part``; ``dest`` appears only complete and verified.

    Network errors and 5xx answers are retried with backoff (1 s, 2 s, ...), each retry
    resuming the ``.part`` file if the server honours a Range request. Other HTTP errors
    fail at once. The ``.part`` file is kept after a failed download so the next run
    resumes, and deleted when the finished file fails verification.
    """
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failure: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _stream(url, part, timeout=timeout, progress=progress)
            break
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416:  # the .part is no prefix the server can continue
                part.unlink(missing_ok=True)
            elif err.code < 500 and err.code not in (408, 429):
                raise PipelineError(_failed(url, f"HTTP {err.code} {err.reason}")) from err
            failure = err
        except (OSError, http.client.HTTPException) as err:
            failure = err
        if attempt < retries:
            delay = 2 ** (attempt - 1)
            logger.warning("download of %s failed (%s); retry in %d s", url, _oneline(failure), delay)
            time.sleep(delay)
    else:
        raise PipelineError(_failed(url, _oneline(failure))) from failure
    _verify(url, part, sha256=sha256, size=size)
    part.replace(dest)


def sha256sum(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def extract_zip(zip_path: Path, target_dir: Path) -> None:
    """Unpack ``zip_path`` into ``target_dir`` all or nothing, refusing members that could escape it.

    Extraction reads every member to its end, so CRC errors and truncation surface here.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise PipelineError(f"missing zip file {zip_path}; {_BY_HAND}")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                problem = _unsafe(member)
                if problem:
                    raise PipelineError(
                        f"{zip_path}: refusing member {member.filename!r} ({problem}); "
                        f"use the official {layout.ARCHIVE_NAME}"
                    )
            with atomic_path(target_dir, is_dir=True) as tmp:
                archive.extractall(tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise PipelineError(
            f"{zip_path}: corrupt or truncated zip ({_oneline(err)}); delete it and download it again, or {_BY_HAND}"
        ) from err
    except NotImplementedError as err:
        raise PipelineError(
            f"{zip_path}: {_oneline(err)}; extract it with another tool and set data.source to the extracted folder"
        ) from err


def fetch_dataset(data: DataParams, out_dir: Path, *, cache_dir: Path) -> None:
    """Make ``out_dir`` the validated dataset root (``out_dir/resources/...``) from ``data.source``.

    ``data.source`` is ``synthetic`` (generated from the other ``data`` keys), ``diaretdb1``
    (official zip, cached in ``cache_dir``) or a path to a zip or extracted folder.
    ``out_dir`` is replaced only on success.
    """
    source = data.source
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if source == "synthetic":
        with atomic_path(out_dir, is_dir=True) as tmp:
            generate(tmp, num_images=data.num_images, size=(data.image_width, data.image_height), seed=data.seed,
                     style=data.synthetic)
            _validate(tmp, shown_as=str(out_dir))
    elif source == "diaretdb1":
        archive = Path(cache_dir) / layout.ARCHIVE_NAME
        if not _verified(archive):
            download(ARCHIVE_URL, archive, sha256=ARCHIVE_SHA256, size=ARCHIVE_SIZE)
        _install_zip(archive, out_dir)
    elif (path := Path(source).expanduser()).is_file():
        _install_zip(path, out_dir)
    elif path.is_dir():
        root = _validate(path, shown_as=str(path))
        with atomic_path(out_dir, is_dir=True) as tmp:
            shutil.copytree(root, tmp, dirs_exist_ok=True)
    else:
        keywords = " or ".join(repr(keyword) for keyword in SOURCES)
        raise PipelineError(
            f"data.source: {source!r} is neither {keywords} nor an existing zip file or folder; "
            "set data.source in params.yaml to one of these"
        )


def _stream(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One attempt: continue ``part`` if the server answers 206 to a Range request, else restart."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        if response.status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not (offset and match and int(match[1]) == offset):
                part.unlink(missing_ok=True)
                raise ConnectionError(f"unexpected partial answer for offset {offset}")
        else:
            offset = 0
        length = response.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name, file=sys.stderr, disable=not progress,
        )
        with open(part, "ab" if offset else "wb") as handle, bar:
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def _verify(url: str, part: Path, *, sha256: str | None, size: int | None) -> None:
    actual_size, digest = part.stat().st_size, sha256sum(part)
    problem = None
    if size is not None and actual_size != size:
        problem = f"{actual_size} bytes instead of {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest} instead of {sha256}"
    if problem:
        part.unlink()
        raise PipelineError(f"{url}: the download has {problem} and was deleted; run again, or {_BY_HAND}")
    if sha256 is None or size is None:
        logger.warning("%s is not verified: size=%d sha256=%s; record them in %s", url, actual_size, digest, __name__)


def _verified(archive: Path) -> bool:
    """True if a previous run left a complete archive (``download`` renames only complete files)."""
    if not archive.is_file():
        return False
    if ARCHIVE_SIZE is not None and archive.stat().st_size != ARCHIVE_SIZE:
        return False
    return ARCHIVE_SHA256 is None or sha256sum(archive) == ARCHIVE_SHA256


def _install_zip(zip_path: Path, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.unpack-", dir=out_dir.parent) as staging:
        unpacked = Path(staging) / "unpacked"
        extract_zip(zip_path, unpacked)
        root = _validate(unpacked, shown_as=str(zip_path))
        with atomic_path(out_dir, is_dir=True) as tmp:
            for child in root.iterdir():
                child.rename(tmp / child.name)


def _validate(folder: Path, *, shown_as: str) -> Path:
    """The dataset root in ``folder``, checked now; errors name ``shown_as`` instead of a temporary path."""
    try:
        dataset = DiaretDB1(folder)
        dataset.read_fundus_mask()
        dataset.official_split()
    except PipelineError as err:
        raise PipelineError(str(err).replace(str(folder), shown_as)) from err
    return dataset.root


def _unsafe(member: zipfile.ZipInfo) -> str | None:
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path escapes the target folder"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "symbolic link"
    return None


def _failed(url: str, reason: str) -> str:
    return f"could not download {url} ({reason}); {_BY_HAND}"


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
