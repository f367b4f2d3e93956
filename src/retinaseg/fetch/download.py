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

from retinaseg.core import layout
from retinaseg.core.atomic import DiskFull, atomic_path, disk_full_reason
from retinaseg.core.errors import PipelineError, one_line
from retinaseg.core.params import SOURCE_KEYWORDS, DataParams
from retinaseg.fetch.dataset import DiaretDB1
from retinaseg.fetch.synthetic.generator import generate

# Plain http: the project page has only ever been published at this address, and whether the server answers
# https could not be checked from a machine without internet; the sha256 (data.sha256) is what guards the file.
PAGE_URL = "http://www.it.lut.fi/project/imageret/diaretdb1/"
ARCHIVE_URL = PAGE_URL + layout.ARCHIVE_NAME
# Size and sha256 of the official zip, recorded once known; until then a download is checked only against
# data.sha256 in params.yaml (when set) and prints both values so they can be pinned there.
ARCHIVE_SIZE: int | None = None
ARCHIVE_SHA256: str | None = None

# Limits that stop a hostile or broken zip before it fills the disk. DIARETDB1 holds
# 89 fundus images (1500x1152 RGB) and 4 x 89 lesion maps (1500x1152, 8 bit): even
# stored as uncompressed bitmaps that is 89 * (5.2 MB + 4 * 1.7 MB) = 1.07 GB, and the
# real files are compressed images, a fraction of that. 2 GiB is twice that worst case.
# Deflate reaches ~1000:1, so a zip of a few MB can declare gigabytes; the limit applies
# to the sizes the members declare (checked before anything is written) and to the bytes
# actually unpacked (counted while writing), whichever is reached first. A per-member
# compression-ratio limit is not used: legitimate files such as the two-valued fundus
# mask can compress by hundreds to one, close to deflate's maximum, so no ratio separates
# them from a bomb; the byte limit bounds the damage whatever the ratio.
#: Most bytes a zip may unpack to (declared or actual).
MAX_UNPACKED_BYTES = 2 * 1024**3
#: Most members a zip may hold (the official one: 89 images, 356 lesion maps and a few more files).
MAX_MEMBERS = 10_000
#: General-purpose flag bit 0 of a zip member: its data is encrypted (ZipCrypto, AES, strong encryption).
_ENCRYPTED = 0x1

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
            if reason := disk_full_reason(err):
                kept = part.stat().st_size if part.exists() else 0
                raise DiskFull(dest, reason, doing=(
                    f"downloading {url} (the {kept} bytes received so far are kept in {part} for the next run "
                    "to resume; delete it to start over)")) from err
            failure = err
        if attempt < retries:
            delay = 2 ** (attempt - 1)
            logger.warning("download of %s failed (%s); retry in %d s", url, one_line(failure), delay)
            time.sleep(delay)
    else:
        raise PipelineError(_failed(url, one_line(failure))) from failure
    _verify(url, part, sha256=sha256, size=size)
    part.replace(dest)


def sha256sum(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def extract_zip(zip_path: Path, target_dir: Path) -> None:
    """Unpack ``zip_path`` into ``target_dir`` all or nothing, refusing members that could escape it.

    Extraction reads every member to its end, so CRC errors and truncation surface here.
    Encrypted members, and zips past ``MAX_MEMBERS`` or ``MAX_UNPACKED_BYTES`` (as declared
    or as actually unpacked), are refused with one line before they fill the disk.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise PipelineError(f"missing zip file {zip_path}; {_BY_HAND}")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for member in members:
                if member.flag_bits & _ENCRYPTED:
                    raise PipelineError(
                        f"{zip_path}: member {member.filename!r} is encrypted (password-protected), which the "
                        f"official {layout.ARCHIVE_NAME} is not; {_BY_HAND} (for a zip of your own, extract it "
                        "with its password first)"
                    )
                problem = _unsafe(member)
                if problem:
                    raise PipelineError(
                        f"{zip_path}: refusing member {member.filename!r} ({problem}); "
                        f"use the official {layout.ARCHIVE_NAME}"
                    )
            _check_size(zip_path, members)
            with atomic_path(target_dir, is_dir=True) as tmp:
                _unpack(zip_path, archive, members, tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise PipelineError(
            f"{zip_path}: corrupt or truncated zip ({one_line(err)}); delete it and download it again, or {_BY_HAND}"
        ) from err
    except NotImplementedError as err:
        raise PipelineError(
            f"{zip_path}: {one_line(err)}; extract it with another tool and set data.source to the extracted folder"
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
        pinned = data.sha256 or ARCHIVE_SHA256
        if not _verified(archive, pinned):
            download(ARCHIVE_URL, archive, sha256=pinned, size=ARCHIVE_SIZE)
        _check_and_report(archive, data.sha256)
        _install_zip(archive, out_dir)
    elif (path := Path(source).expanduser()).is_file():
        _check_and_report(path, data.sha256)
        _install_zip(path, out_dir)
    elif path.is_dir():
        root = _validate(path, shown_as=str(path))
        with atomic_path(out_dir, is_dir=True) as tmp:
            shutil.copytree(root, tmp, dirs_exist_ok=True)
    else:
        keywords = " or ".join(repr(keyword) for keyword in SOURCE_KEYWORDS)
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
    if sha256 is None and size is None:
        logger.warning("%s is not verified: neither its size nor its sha256 is recorded to check against; "
                       "size=%d sha256=%s; pin it with data.sha256 in params.yaml", url, actual_size, digest)
    elif sha256 is None:
        logger.warning("%s is not verified: its size matched, but no sha256 is recorded to check against; "
                       "size=%d sha256=%s; pin it with data.sha256 in params.yaml", url, actual_size, digest)
    elif size is None:
        logger.warning("%s matched its recorded sha256; its size was not checked (none recorded): "
                       "size=%d; record it in %s", url, actual_size, __name__)


def _verified(archive: Path, sha256: str | None) -> bool:
    """True if a previous run left a complete archive (``download`` renames only complete files)."""
    if not archive.is_file():
        return False
    if ARCHIVE_SIZE is not None and archive.stat().st_size != ARCHIVE_SIZE:
        return False
    return sha256 is None or sha256sum(archive) == sha256


def _check_and_report(archive: Path, pinned: str | None) -> None:
    """Before unpacking: the archive must be the one ``data.sha256`` pins, when it pins one; print its size and
    sha256 (hashed once), so they can be pinned and every later fetch checked."""
    digest = sha256sum(archive)
    if pinned is not None and digest != pinned:
        raise PipelineError(f"{archive}: sha256 {digest}, but data.sha256 in params.yaml pins {pinned}; "
                            "point data.source at the pinned archive or set data.sha256 to null")
    check = "as data.sha256 pins" if pinned else f"pin it with `data.sha256: {digest}` in params.yaml"
    print(f"fetch: {archive.name}, {archive.stat().st_size} bytes, sha256 {digest} ({check})")


def _install_zip(zip_path: Path, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.unpack-", dir=out_dir.parent) as staging:
        unpacked = Path(staging) / "unpacked"
        try:
            extract_zip(zip_path, unpacked)
        except DiskFull as err:  # it names the staging folder, which the user never sees
            raise DiskFull(out_dir, err.reason, doing=(
                f"unpacking {zip_path} (the partial output was deleted, any earlier version is unchanged)"
            )) from err.__cause__
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


def _check_size(zip_path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse, before writing anything, a zip whose members are too many or declare too many bytes."""
    declared = sum(member.file_size for member in members)
    if len(members) > MAX_MEMBERS:
        found = f"{len(members)} members, more than the {MAX_MEMBERS} allowed"
    elif declared > MAX_UNPACKED_BYTES:
        found = f"members that unpack to {_mib(declared)}, more than the {_mib(MAX_UNPACKED_BYTES)} allowed"
    else:
        return
    raise PipelineError(
        f"{zip_path}: refusing a zip with {found} (DIARETDB1 needs far less; a damaged file or a zip bomb); "
        f"nothing was unpacked; {_BY_HAND}"
    )


def _unpack(zip_path: Path, archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], folder: Path) -> None:
    """Write every member under ``folder``, counting the bytes actually unpacked against the limit.

    Python's zipfile already stops a member at its declared size (and then fails its CRC
    check); the count also holds if a reader ever trusts the compressed stream instead.
    """
    written = 0
    for member in members:
        parts = [part for part in member.filename.split("/") if part not in ("", ".")]
        if not parts:
            continue
        path = folder.joinpath(*parts)
        if member.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as packed, open(path, "wb") as target:
            while chunk := packed.read(_CHUNK):
                written += len(chunk)
                if written > MAX_UNPACKED_BYTES:
                    raise PipelineError(
                        f"{zip_path}: member {member.filename!r} unpacks past the {_mib(MAX_UNPACKED_BYTES)} "
                        "allowed, more than its zip declares (a damaged file or a zip bomb); "
                        f"the partial output was deleted; {_BY_HAND}"
                    )
                try:
                    target.write(chunk)
                except OSError as err:  # write() names no file; a full disk is reported with it
                    if err.filename is None and disk_full_reason(err):
                        raise OSError(err.errno, err.strerror, str(path)) from err
                    raise


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.1f} MiB" if size >= 1024**2 else f"{size:,} bytes"


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
