"""Download, extraction and the fetch stage, against a local HTTP server and generated archives."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import one_line_error

from retinaseg.core import layout
from retinaseg.core.params import DataParams
from retinaseg.fetch import download as fetch
from retinaseg.fetch.dataset import DiaretDB1
from retinaseg.fetch.download import download, extract_zip, fetch_dataset, sha256sum
from retinaseg.fetch.synthetic.generator import build_archive, generate

NUM = 4
SIZE = (150, 115)


@dataclass
class Server:
    """What the handler serves and what it saw."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    cut_next_answer_at: int | None = None
    cut_every_answer: bool = False  # keep cutting at cut_next_answer_at instead of only once
    requests: list[str | None] = field(default_factory=list)  # Range header of each request
    sent: int = 0


class Handler(BaseHTTPRequestHandler):
    """Serves ``Server.files``, honours ``Range: bytes=N-`` when asked, and can drop a connection."""

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        state.requests.append(self.headers.get("Range"))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if state.ranges and match else 0
        if start >= len(data) > 0 and match:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_next_answer_at is not None:
            body = body[: state.cut_next_answer_at]
            if not state.cut_every_answer:
                state.cut_next_answer_at = None
        state.sent += len(body)  # before writing: the client may check it as soon as it has the bytes
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generate(root, num_images=NUM, size=SIZE, seed=5)
    return root


@pytest.fixture(scope="module")
def archive(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / layout.ARCHIVE_NAME
    build_archive(generated, path)
    return path


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff delays requested by ``download``, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", delays.append)
    return delays


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


class FullDisk:
    """An ``open`` for download.py whose files, opened for writing, hit a full disk after ``budget`` bytes in all.

    Installed with ``monkeypatch.setattr(fetch, "open", FullDisk(n), raising=False)``: the
    module's own ``open`` then shadows the builtin, and a write past the budget writes what
    fits and raises ENOSPC without a file name, as ``write()`` does.
    """

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = open(file, mode, *args, **kwargs)  # type: ignore[call-overload]
        return handle if set(mode).isdisjoint("wax+") else _Filling(handle, self)


class _Filling:
    def __init__(self, handle: io.BufferedWriter, disk: FullDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data: bytes) -> int:
        fits = min(len(data), self._disk.left)
        self._handle.write(data[:fits])
        self._disk.left -= fits
        if fits < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)


# --- download ------------------------------------------------------------------------------


def _unverified(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages of the warnings ``download`` logs when it could not verify a file."""
    return [r.getMessage() for r in caplog.records
            if r.name == fetch.__name__ and r.levelno == logging.WARNING and "not verified" in r.getMessage()]


def test_download_with_correct_checksum(
    server: Server, archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = archive.read_bytes()
    server.files["/a.zip"] = data
    dest = tmp_path / "cache" / "a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        download(f"{server.url}/a.zip", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data), progress=False)
    assert dest.read_bytes() == data
    assert not dest.with_name("a.zip.part").exists()
    assert server.requests == [None]
    assert _unverified(caplog) == []


def test_progress_bar_goes_to_stderr(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.files["/a.zip"] = b"z" * 5000
    download(f"{server.url}/a.zip", tmp_path / "a.zip")
    captured = capsys.readouterr()
    assert "a.zip.part" in captured.err and "100%" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(("size", "checked"), [(None, "neither its size nor its sha256 is recorded"),
                                               (7, "its size matched, but no sha256 is recorded")])
def test_download_without_checksum_logs_that_it_is_not_verified(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int | None, checked: str
) -> None:
    """With no sha256 known the file is kept; one warning names the url, what was checked and the values to record."""
    server.files["/a.zip"] = b"payload"
    url = f"{server.url}/a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        download(url, tmp_path / "a.zip", sha256=None, size=size, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == b"payload"
    [message] = _unverified(caplog)
    assert message.startswith(f"{url} is not verified: {checked}")
    assert f"size=7 sha256={hashlib.sha256(b'payload').hexdigest()}" in message


def test_download_with_sha256_but_no_size_says_only_the_size_was_not_checked(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A matching sha256 verifies the file; the note only asks to record the size, and says nothing is unverified."""
    server.files["/a.zip"] = b"payload"
    url = f"{server.url}/a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        download(url, tmp_path / "a.zip", sha256=hashlib.sha256(b"payload").hexdigest(), size=None, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == b"payload"
    assert _unverified(caplog) == []
    [message] = [r.getMessage() for r in caplog.records if r.name == fetch.__name__]
    assert message.startswith(f"{url} matched its recorded sha256; its size was not checked")
    assert "size=7;" in message and "sha256=" not in message


@pytest.mark.parametrize("size", [3, 10**6])
def test_download_without_checksum_still_refuses_a_wrong_size(
    server: Server, archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    data = archive.read_bytes()
    server.files["/a.zip"] = data
    url, dest = f"{server.url}/a.zip", tmp_path / "a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        one_line_error(lambda: download(url, dest, sha256=None, size=size, progress=False),
                       url, f"has {len(data)} bytes instead of {size} and was deleted", fetch.PAGE_URL)
    assert list(tmp_path.iterdir()) == []
    assert _unverified(caplog) == []


def test_download_without_checksum_or_size_still_fails_when_cut_short(
    server: Server, archive: Path, tmp_path: Path, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length still exposes a truncated answer: every attempt resumes, none is accepted as complete."""
    data = archive.read_bytes()
    assert len(data) > 4000
    server.files["/a.zip"], server.cut_next_answer_at, server.cut_every_answer = data, 1000, True
    url, dest = f"{server.url}/a.zip", tmp_path / "a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        one_line_error(lambda: download(url, dest, sha256=None, size=None, progress=False),
                       url, "could not download", fetch.PAGE_URL)
    assert not dest.exists()
    assert (tmp_path / "a.zip.part").read_bytes() == data[:3000]  # kept for the next run to resume
    assert server.requests == [None, "bytes=1000-", "bytes=2000-"] and sleeps == [1, 2]
    assert _unverified(caplog) == []


@pytest.mark.parametrize(("sha256", "size", "problem"), [("0" * 64, None, "sha256"), (None, 3, "bytes instead of 3")])
def test_verification_failure_leaves_no_file(
    server: Server, archive: Path, tmp_path: Path, sha256: str | None, size: int | None, problem: str
) -> None:
    server.files["/a.zip"] = archive.read_bytes()
    url, dest = f"{server.url}/a.zip", tmp_path / "a.zip"
    one_line_error(lambda: download(url, dest, sha256=sha256, size=size, progress=False), url, problem, fetch.PAGE_URL)
    assert list(tmp_path.iterdir()) == []


def test_partial_file_is_resumed_with_a_range_request(server: Server, archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    server.files["/a.zip"] = data
    dest = tmp_path / "a.zip"
    half = len(data) // 2
    (tmp_path / "a.zip.part").write_bytes(data[:half])
    download(f"{server.url}/a.zip", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [f"bytes={half}-"]
    assert server.sent == len(data) - half


def test_partial_file_restarts_when_the_server_ignores_range(server: Server, archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    server.files["/a.zip"], server.ranges = data, False
    (tmp_path / "a.zip.part").write_bytes(b"stale bytes of another file")
    download(f"{server.url}/a.zip", tmp_path / "a.zip", progress=False)
    assert (tmp_path / "a.zip").read_bytes() == data
    assert server.sent == len(data)


def test_dropped_connection_is_retried_and_resumed(
    server: Server, archive: Path, tmp_path: Path, sleeps: list[float]
) -> None:
    data = archive.read_bytes()
    server.files["/a.zip"], server.cut_next_answer_at = data, 1000
    download(f"{server.url}/a.zip", tmp_path / "a.zip", size=len(data), progress=False)
    assert (tmp_path / "a.zip").read_bytes() == data
    assert server.requests == [None, "bytes=1000-"]
    assert sleeps == [1]


def test_part_longer_than_the_file_is_discarded(server: Server, tmp_path: Path, sleeps: list[float]) -> None:
    server.files["/a.zip"] = b"0123456789"
    (tmp_path / "a.zip.part").write_bytes(b"0123456789 and more")
    download(f"{server.url}/a.zip", tmp_path / "a.zip", progress=False)
    assert (tmp_path / "a.zip").read_bytes() == b"0123456789"
    assert server.requests == ["bytes=19-", None]


def test_missing_file_on_the_server_fails_at_once(server: Server, tmp_path: Path, sleeps: list[float]) -> None:
    url = f"{server.url}/nothing.zip"
    one_line_error(lambda: download(url, tmp_path / "a.zip", progress=False), url, "404", fetch.PAGE_URL, "data.source")
    assert server.requests == [None] and sleeps == []
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_is_retried_then_reported(tmp_path: Path, sleeps: list[float]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.zip"
    one_line_error(lambda: download(url, tmp_path / "a.zip", progress=False), url, "refused", "data.source")
    assert sleeps == [1, 2]
    assert not (tmp_path / "a.zip").exists()


def test_full_disk_stops_the_download_at_once_and_keeps_the_part(
    server: Server, archive: Path, tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No retries (they cannot help), and a message that says to free space instead of downloading by hand."""
    data = archive.read_bytes()
    server.files["/a.zip"] = data
    url, dest = f"{server.url}/a.zip", tmp_path / "a.zip"
    monkeypatch.setattr(fetch, "open", FullDisk(1000), raising=False)
    message = one_line_error(lambda: download(url, dest, progress=False),
                             f"{dest}: no space left on device while downloading {url}",
                             f"the 1000 bytes received so far are kept in {dest}.part", "free space on the disk")
    assert "download diaretdb1" not in message
    assert server.requests == [None] and sleeps == []
    assert not dest.exists() and (tmp_path / "a.zip.part").read_bytes() == data[:1000]


def test_sha256sum_matches_hashlib(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert sha256sum(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()


# --- extract_zip ---------------------------------------------------------------------------


def _member_data_offset(path: Path, name: str) -> tuple[int, int]:
    """Start and length of a member's compressed bytes inside the zip file."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    header = path.read_bytes()[info.header_offset : info.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def test_extract_unpacks_the_archive(archive: Path, generated: Path, tmp_path: Path) -> None:
    extract_zip(archive, tmp_path / "out")
    assert _files(tmp_path / "out" / layout.ARCHIVE_ROOT) == _files(generated)


def test_corrupt_member_is_detected(archive: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    data = bytearray(archive.read_bytes())
    start, length = _member_data_offset(archive, f"{layout.ARCHIVE_ROOT}/{layout.image_path(2)}")
    data[start + length // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    one_line_error(lambda: extract_zip(broken, tmp_path / "out"), str(broken), "corrupt")
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_detected(archive: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    one_line_error(lambda: extract_zip(truncated, tmp_path / "out"), str(truncated), "truncated", fetch.PAGE_URL)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "mode", "problem"),
    [("../evil", 0o100644, "escapes"), ("/tmp/evil", 0o100644, "absolute"), ("link", 0o120777, "symbolic link")],
)
def test_unsafe_members_are_refused(tmp_path: Path, name: str, mode: int, problem: str) -> None:
    path = tmp_path / "inside" / "evil.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("diaretdb1_v_1_1/readme.txt", "fine")
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        archive.writestr(info, "../../outside")
    one_line_error(lambda: extract_zip(path, tmp_path / "inside" / "out"), str(path), repr(name), problem)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "inside"]


def _patch_headers(path: Path, *, local: dict[int, int], central: dict[int, int]) -> None:
    """OR flag bits into (offset 6/8) or overwrite (other offsets) little-endian fields of every member's headers.

    ``local`` maps an offset in the local file header, ``central`` one in the central
    directory entry, to a value: offsets 6 and 8 are the 2-byte general-purpose flags,
    the others 4-byte fields (18/20 compressed size, 22/24 uncompressed size).
    """
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local_starts = [info.header_offset for info in archive.infolist()]
    central_starts = [match.start() for match in re.finditer(re.escape(b"PK\x01\x02"), bytes(data))]
    assert len(central_starts) == len(local_starts)
    for starts, fields, flags_at in ((local_starts, local, 6), (central_starts, central, 8)):
        for start in starts:
            for offset, value in fields.items():
                if offset == flags_at:
                    data[start + offset] |= value
                else:
                    data[start + offset : start + offset + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


def _encrypted_zip(path: Path, how: str) -> None:
    """A zip whose members are encrypted: the flag bit set by hand, or a real ZipCrypto zip from Info-ZIP."""
    source = path.parent / "plain" / layout.ARCHIVE_ROOT
    source.mkdir(parents=True)
    (source / "readme.txt").write_text("the dataset would be here\n")
    if how == "flag bit":
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(source / "readme.txt", f"{layout.ARCHIVE_ROOT}/readme.txt")
        _patch_headers(path, local={6: 0x1}, central={8: 0x1})
    else:
        if shutil.which("zip") is None:
            pytest.skip("Info-ZIP's zip is not installed")
        subprocess.run(["zip", "-q", "-P", "secret", str(path), f"{layout.ARCHIVE_ROOT}/readme.txt"],
                       cwd=source.parent, check=True)
    shutil.rmtree(path.parent / "plain")
    with zipfile.ZipFile(path) as archive:
        assert all(info.flag_bits & 0x1 for info in archive.infolist())


@pytest.mark.parametrize("how", ["flag bit", "zip -P"])
def test_encrypted_zip_is_refused_in_one_line(tmp_path: Path, how: str) -> None:
    path = tmp_path / "locked.zip"
    _encrypted_zip(path, how)
    for call in (lambda: extract_zip(path, tmp_path / "out"), lambda: _fetch(str(path), tmp_path / "raw", tmp_path)):
        one_line_error(call, str(path), f"'{layout.ARCHIVE_ROOT}/readme.txt'", "encrypted (password-protected)",
                       f"official {layout.ARCHIVE_NAME} is not", fetch.PAGE_URL)
    assert [p.name for p in tmp_path.iterdir()] == ["locked.zip"]


def _zeros_zip(path: Path, size: int, name: str = f"{layout.ARCHIVE_ROOT}/zeros.bin") -> None:
    """One deflated member of ``size`` zero bytes: 20 MB compress to about 20 KB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w") as member:
            block = bytes(1 << 20)
            for start in range(0, size, len(block)):
                member.write(block[: size - start])


def test_zip_bomb_is_refused_by_its_declared_size_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.zip"
    _zeros_zip(path, 20 * 2**20)
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(fetch, "MAX_UNPACKED_BYTES", 2**20)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(str(name)) or real_open(
        self, name, *a, **k))
    for call in (lambda: extract_zip(path, tmp_path / "out"), lambda: _fetch(str(path), tmp_path / "raw", tmp_path)):
        one_line_error(call, str(path), "20.0 MiB", "more than the 1.0 MiB allowed", "zip bomb",
                       "nothing was unpacked", fetch.PAGE_URL)
    assert opened == []  # refused from the central directory alone
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


def test_declared_size_beyond_the_default_limit_is_refused(tmp_path: Path) -> None:
    """The real limit (2 GiB), met by a small zip whose directory declares 3 GB for one member."""
    path = tmp_path / "huge.zip"
    _zeros_zip(path, 1000)
    _patch_headers(path, local={22: 3_000_000_000}, central={24: 3_000_000_000})
    assert fetch.MAX_UNPACKED_BYTES == 2 * 1024**3
    one_line_error(lambda: extract_zip(path, tmp_path / "out"), str(path), "2,861.0 MiB", "2,048.0 MiB allowed")
    assert [p.name for p in tmp_path.iterdir()] == ["huge.zip"]


def test_unpacked_bytes_are_counted_even_beyond_the_declared_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared sizes can lie. Python's zipfile stops at the declared size (see the next test); should a
    reader ever follow the compressed stream instead, the bytes actually written still stop at the limit."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{layout.ARCHIVE_ROOT}/small.txt", b"x" * 100)
    monkeypatch.setattr(fetch, "MAX_UNPACKED_BYTES", 2**20)
    served: list[int] = []

    class Stream(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            served.append(len(chunk))
            return chunk

    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *args, **kwargs: Stream(bytes(5 * 2**20)))
    one_line_error(lambda: extract_zip(path, tmp_path / "out"), str(path), f"'{layout.ARCHIVE_ROOT}/small.txt'",
                   "unpacks past the 1.0 MiB allowed", "more than its zip declares", "zip bomb")
    assert 2**20 < sum(served) <= 2 * 2**20  # stopped within a chunk of the limit, not after all 5 MiB
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def test_member_larger_than_declared_stops_at_the_declared_size(tmp_path: Path) -> None:
    """20 MB of zeros declared as 1000 bytes: zipfile writes 1000 bytes, then the CRC check fails."""
    path = tmp_path / "liar.zip"
    _zeros_zip(path, 20 * 2**20)
    _patch_headers(path, local={22: 1000}, central={24: 1000})
    one_line_error(lambda: extract_zip(path, tmp_path / "out"), str(path), "corrupt or truncated zip", "CRC")
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def test_zip_with_too_many_members_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(6):
            archive.writestr(f"{layout.ARCHIVE_ROOT}/empty{index}.txt", b"")
    monkeypatch.setattr(fetch, "MAX_MEMBERS", 5)
    one_line_error(lambda: extract_zip(path, tmp_path / "out"), str(path), "6 members, more than the 5 allowed")
    assert [p.name for p in tmp_path.iterdir()] == ["many.zip"]


def test_full_disk_while_unpacking_names_the_output_and_keeps_the_earlier_one(
    archive: Path, generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    shutil.copytree(generated, out)
    before = _files(out)
    monkeypatch.setattr(fetch, "open", FullDisk(10_000), raising=False)
    one_line_error(lambda: extract_zip(archive, tmp_path / "out"),
                   f"{tmp_path / 'out'}: no space left on device while writing {layout.ARCHIVE_ROOT}/resources/")
    monkeypatch.setattr(fetch, "open", FullDisk(10_000), raising=False)
    message = one_line_error(lambda: _fetch(str(archive), out, tmp_path / "cache"),
                             f"{out}: no space left on device while unpacking {archive}", "free space")
    assert ".unpack-" not in message and ".partial-" not in message
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_missing_zip_is_reported(tmp_path: Path) -> None:
    one_line_error(lambda: extract_zip(tmp_path / "none.zip", tmp_path / "out"), str(tmp_path / "none.zip"), "missing")


# --- fetch_dataset -------------------------------------------------------------------------


def _data(source: str, **overrides: object) -> DataParams:
    return DataParams(**{"source": source, "seed": 5, "num_images": NUM, "image_width": SIZE[0],
                         "image_height": SIZE[1], "synthetic": "realistic", **overrides})


def _fetch(source: str, out_dir: Path, cache_dir: Path) -> None:
    fetch_dataset(_data(source), out_dir, cache_dir=cache_dir)


def test_fetch_synthetic_generates_the_dataset_root(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    (out / "diaretdb1_v_1_1").mkdir(parents=True)  # a stale earlier output is replaced
    _fetch("synthetic", out, tmp_path / "cache")
    assert _files(out) == _files(generated)
    assert DiaretDB1(out).root == out
    assert DiaretDB1(out).read_simulated_truth()  # data/raw/simulated_truth.json, beside resources/


def test_fetch_synthetic_takes_every_setting_from_the_data_block(tmp_path: Path) -> None:
    data = _data("synthetic", seed=7, num_images=3, image_width=64, image_height=48, synthetic="easy")
    fetch_dataset(data, tmp_path / "raw", cache_dir=tmp_path / "cache")
    generate(tmp_path / "expected", num_images=3, size=(64, 48), seed=7, style="easy")
    assert _files(tmp_path / "raw") == _files(tmp_path / "expected")
    assert DiaretDB1(tmp_path / "raw").read_image(3).shape == (48, 64, 3)
    assert not (tmp_path / "cache").exists()


def test_fetch_from_a_zip_path_installs_the_root_itself(archive: Path, generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    _fetch(str(archive), out, tmp_path / "cache")
    assert _files(out) == _files(generated)  # the simulated truth included: the zip holds it too
    assert (out / layout.SIMULATED_TRUTH).is_file()
    dataset = DiaretDB1(out)
    assert dataset.root == out and dataset.image_ids() == list(range(1, NUM + 1))
    assert dataset.read_image(NUM).shape == (SIZE[1], SIZE[0], 3)
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


@pytest.mark.parametrize("nested", [True, False])
def test_fetch_from_a_folder_copies_the_root(generated: Path, tmp_path: Path, nested: bool) -> None:
    source = tmp_path / "download"
    shutil.copytree(generated, source / layout.ARCHIVE_ROOT if nested else source)
    out = tmp_path / "raw"
    _fetch(str(source), out, tmp_path / "cache")
    assert _files(out) == _files(generated)
    assert DiaretDB1(out).official_split() == {"train": [1, 2], "test": [3, 4]}
    assert _files(source)  # the source is copied, not moved


@pytest.mark.parametrize("recorded", [False, True])
def test_fetch_diaretdb1_downloads_once_then_reuses_the_cache(
    server: Server, archive: Path, generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: bool
) -> None:
    """Whether or not the official size and sha256 are recorded, a complete cached archive is reused."""
    data = archive.read_bytes()
    server.files["/official.zip"] = data
    monkeypatch.setattr(fetch, "ARCHIVE_URL", f"{server.url}/official.zip")
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", hashlib.sha256(data).hexdigest() if recorded else None)
    monkeypatch.setattr(fetch, "ARCHIVE_SIZE", len(data) if recorded else None)
    _fetch("diaretdb1", tmp_path / "raw", tmp_path / "cache")
    _fetch("diaretdb1", tmp_path / "raw2", tmp_path / "cache")
    assert server.requests == [None]
    assert (tmp_path / "cache" / layout.ARCHIVE_NAME).read_bytes() == archive.read_bytes()
    assert _files(tmp_path / "raw") == _files(tmp_path / "raw2") == _files(generated)


@pytest.mark.parametrize("known", ["sha256", "size"])
def test_fetch_diaretdb1_replaces_a_cached_file_that_fails_verification(
    server: Server, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known: str
) -> None:
    """A known sha256 or, without one, a known size is enough to refuse an older cached file."""
    data = archive.read_bytes()
    server.files["/official.zip"] = data
    monkeypatch.setattr(fetch, "ARCHIVE_URL", f"{server.url}/official.zip")
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", hashlib.sha256(data).hexdigest() if known == "sha256" else None)
    monkeypatch.setattr(fetch, "ARCHIVE_SIZE", len(data) if known == "size" else None)
    cached = tmp_path / "cache" / layout.ARCHIVE_NAME
    cached.parent.mkdir()
    cached.write_bytes(b"an older, different file")
    _fetch("diaretdb1", tmp_path / "raw", tmp_path / "cache")
    assert cached.read_bytes() == data and server.requests == [None]
    assert DiaretDB1(tmp_path / "raw").image_ids() == list(range(1, NUM + 1))


def test_fetch_diaretdb1_without_checksum_refuses_a_download_of_the_wrong_size(
    server: Server, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = archive.read_bytes()
    server.files["/official.zip"] = data[:-1]
    url = f"{server.url}/official.zip"
    monkeypatch.setattr(fetch, "ARCHIVE_URL", url)
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", None)
    monkeypatch.setattr(fetch, "ARCHIVE_SIZE", len(data))
    one_line_error(lambda: _fetch("diaretdb1", tmp_path / "raw", tmp_path / "cache"),
                   url, f"{len(data) - 1} bytes instead of {len(data)}")
    assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "raw").exists()


def test_fetch_diaretdb1_without_checksum_still_checks_the_zip(
    server: Server, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no sha256 and size known, a complete answer that is a truncated zip is caught when unpacking."""
    truncated = archive.read_bytes()[: archive.stat().st_size // 2]
    server.files["/official.zip"] = truncated
    url = f"{server.url}/official.zip"
    monkeypatch.setattr(fetch, "ARCHIVE_URL", url)
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", None)
    monkeypatch.setattr(fetch, "ARCHIVE_SIZE", None)
    cached = tmp_path / "cache" / layout.ARCHIVE_NAME
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        one_line_error(lambda: _fetch("diaretdb1", tmp_path / "raw", tmp_path / "cache"),
                       str(cached), "corrupt or truncated zip", "delete it and download it again")
    [message] = _unverified(caplog)
    assert message.startswith(f"{url} is not verified: ")
    assert f"size={len(truncated)} sha256={hashlib.sha256(truncated).hexdigest()}" in message
    assert not (tmp_path / "raw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_fetch_from_a_bad_zip_keeps_the_previous_output(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    shutil.copytree(generated, out)
    before = _files(out)
    damaged = tmp_path / "damaged"
    shutil.copytree(generated, damaged)
    (damaged / layout.TEST_LIST).unlink()
    build_archive(damaged, tmp_path / "damaged.zip")
    message = one_line_error(lambda: _fetch(str(tmp_path / "damaged.zip"), out, tmp_path / "cache"), "testset.txt")
    assert str(tmp_path / "damaged.zip" / layout.ARCHIVE_ROOT / layout.TEST_LIST) in message
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "damaged.zip", "raw"]


def test_fetch_from_a_zip_without_the_dataset_names_the_zip(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photos/cat.png", b"not a fundus")
    message = one_line_error(lambda: _fetch(str(path), tmp_path / "raw", tmp_path / "cache"), str(path), str(layout.IMAGES_DIR))
    assert ".unpack-" not in message
    assert not (tmp_path / "raw").exists()


def test_unknown_source_is_refused(tmp_path: Path) -> None:
    one_line_error(
        lambda: _fetch("diaretdb2", tmp_path / "raw", tmp_path / "cache"),
        "data.source", "'diaretdb2'", "'synthetic'", "'diaretdb1'", "zip",
    )
    assert not (tmp_path / "raw").exists()


def test_fetch_prints_the_archive_sha256_and_data_sha256_pins_it(
    server: Server, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = archive.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server.files["/official.zip"] = data
    monkeypatch.setattr(fetch, "ARCHIVE_URL", f"{server.url}/official.zip")
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", None)
    monkeypatch.setattr(fetch, "ARCHIVE_SIZE", None)
    _fetch("diaretdb1", tmp_path / "raw", tmp_path / "cache")
    assert f"{len(data)} bytes, sha256 {digest} (pin it with `data.sha256: {digest}` in params.yaml)" in \
        capsys.readouterr().out
    fetch_dataset(_data("diaretdb1", sha256=digest), tmp_path / "raw2", cache_dir=tmp_path / "cache")
    assert "as data.sha256 pins" in capsys.readouterr().out and server.requests == [None]
    other = "0" * 64  # a pin the cached file does not match: it is downloaded again and refused
    one_line_error(lambda: fetch_dataset(_data("diaretdb1", sha256=other), tmp_path / "raw3",
                                         cache_dir=tmp_path / "cache"), f"sha256 {digest} instead of {other}")
    assert not (tmp_path / "raw3").exists()


def test_a_local_zip_that_data_sha256_does_not_pin_is_refused(archive: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    fetch_dataset(_data(str(archive), sha256=digest), tmp_path / "raw", cache_dir=tmp_path / "cache")
    one_line_error(lambda: fetch_dataset(_data(str(archive), sha256="f" * 64), tmp_path / "raw2",
                                         cache_dir=tmp_path / "cache"),
                   str(archive), f"sha256 {digest}", "data.sha256 in params.yaml pins", "set data.sha256 to null")
    assert not (tmp_path / "raw2").exists()
