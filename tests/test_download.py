"""Download, extraction and the fetch stage, against a local HTTP server and generated archives."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from retinaseg import download as fetch
from retinaseg import layout
from retinaseg.dataset import DiaretDB1
from retinaseg.download import download, extract_zip, fetch_dataset, sha256sum
from retinaseg.params import DataParams
from retinaseg.synthetic import build_archive, generate
from helpers import one_line_error

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


@pytest.mark.parametrize("size", [None, 7])
def test_download_without_checksum_logs_that_it_is_not_verified(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int | None
) -> None:
    """With no sha256 known the file is kept, and one warning names the url and the values to record."""
    server.files["/a.zip"] = b"payload"
    url = f"{server.url}/a.zip"
    with caplog.at_level(logging.WARNING, logger=fetch.__name__):
        download(url, tmp_path / "a.zip", sha256=None, size=size, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == b"payload"
    [message] = _unverified(caplog)
    assert message.startswith(f"{url} is not verified: ")
    assert f"size=7 sha256={hashlib.sha256(b'payload').hexdigest()}" in message


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
    assert _files(out) == _files(generated)
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
