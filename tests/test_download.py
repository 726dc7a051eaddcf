"""Download with checksum and resume, safe extraction, prepare_dataset (all offline)."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import one_line_error, run_entry
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import crackseg.runs.resolvers  # noqa: F401  (the configs' resolvers)
from crackseg import CONFIG_DIR
from crackseg.data.datamodule import CrackDataModule
from crackseg.data.download import download_archive, extract_archive, prepare_dataset
from crackseg.data.layouts import index_layout
from crackseg.errors import ConfigError, DataError
from crackseg.runs.config_checks import check_config


def _png_bytes(value: int) -> bytes:
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".png", np.full((8, 8), value, np.uint8))
    assert ok
    return data.tobytes()


def _dataset_zip(path: Path, wrap: str = "") -> Path:
    """A tiny KolektorSDD2-like archive; stored uncompressed so it is big enough to split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split in ("train", "test"):
            zf.writestr(f"{wrap}{split}/1.png", _png_bytes(90))
            zf.writestr(f"{wrap}{split}/1_GT.png", _png_bytes(255))
            zf.writestr(f"{wrap}{split}/2.png", _png_bytes(30))
            zf.writestr(f"{wrap}{split}/2_GT.png", _png_bytes(0))
        zf.writestr(f"{wrap}padding.bin", bytes(range(256)) * 64)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path) -> Path:
    return _dataset_zip(tmp_path / "source" / "ksdd2.zip")


def test_download_verify_extract(tmp_path, archive):
    dest = tmp_path / "data"
    path = download_archive(archive.as_uri(), dest, _sha(archive))
    assert path == dest / "ksdd2.zip" and path.read_bytes() == archive.read_bytes()
    assert not (dest / "ksdd2.zip.part").exists()
    extract_archive(path, dest)
    indexed = index_layout("ksdd2", dest)
    assert [(s.sample_id, s.is_positive) for s in indexed["train"]] == [
        ("train_1", True),
        ("train_2", False),
    ]
    # an existing verified file is not fetched again: the source is gone and it still works
    archive.unlink()
    assert download_archive(archive.as_uri(), dest, _sha(path)) == path


def test_wrong_checksum_deletes_download(tmp_path, archive):
    dest = tmp_path / "data"
    with pytest.raises(DataError) as info:
        download_archive(archive.as_uri(), dest, "0" * 64)
    message = str(info.value)
    assert "0" * 64 in message and _sha(archive) in message
    assert not (dest / "ksdd2.zip").exists() and not (dest / "ksdd2.zip.part").exists()


def test_partial_file_is_resumed(tmp_path, archive):
    dest = tmp_path / "data"
    dest.mkdir()
    data = archive.read_bytes()
    half = len(data) // 2
    (dest / "ksdd2.zip.part").write_bytes(data[:half])
    path = download_archive(archive.as_uri(), dest, _sha(archive))
    assert path.read_bytes() == data
    # it continued from the offset rather than starting again: a marked prefix survives
    other = tmp_path / "other"
    other.mkdir()
    (other / "ksdd2.zip.part").write_bytes(b"X" * half)
    path = download_archive(archive.as_uri(), other, None)
    assert path.read_bytes() == b"X" * half + data[half:]


def test_no_checksum_logs_computed_sha(tmp_path, archive, caplog):
    with caplog.at_level(logging.WARNING):
        download_archive(archive.as_uri(), tmp_path / "d", None)
    assert _sha(archive) in caplog.text and "cannot be verified" in caplog.text


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        wanted = self.headers.get("Range")
        type(self).seen.append(wanted)
        body, status = self.payload, 200
        if wanted and self.honour_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_resume_with_range(tmp_path, archive, honour_range):
    data = archive.read_bytes()
    handler = type(
        "H", (_RangeHandler,), {"payload": data, "honour_range": honour_range, "seen": []}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "data"
        dest.mkdir()
        half = len(data) // 2
        (dest / "k.zip.part").write_bytes(data[:half])
        url = f"http://127.0.0.1:{server.server_address[1]}/files/k.zip"
        path = download_archive(url, dest, _sha(archive))
        assert path.read_bytes() == data
        assert handler.seen == [f"bytes={half}-"]
    finally:
        server.shutdown()
        server.server_close()


def test_extract_is_done_once_and_redone_if_interrupted(tmp_path, archive):
    dest = tmp_path / "x"
    extract_archive(archive, dest)
    (dest / "train" / "1.png").unlink()
    extract_archive(archive, dest)  # marker present: nothing happens
    assert not (dest / "train" / "1.png").exists()
    for marker in dest.glob(".extracted-*"):
        marker.unlink()  # as if the first extraction had been interrupted
    extract_archive(archive, dest)
    assert (dest / "train" / "1.png").exists()


def test_extract_refuses_escaping_members(tmp_path):
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "gotcha")
    with pytest.raises(DataError, match="evil.txt"):
        extract_archive(bad_zip, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()

    bad_tar = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_tar, "w:gz") as tf:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="link"):
        extract_archive(bad_tar, tmp_path / "out2")


def test_extract_tar_gz(tmp_path):
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        payload = b"hello"
        info = tarfile.TarInfo("d/train/a.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    extract_archive(archive, tmp_path / "o")
    assert (tmp_path / "o" / "d" / "train" / "a.txt").read_bytes() == b"hello"


def test_prepare_dataset_downloads_once(tmp_path):
    source = _dataset_zip(tmp_path / "src" / "KolektorSDD2.zip", wrap="KolektorSDD2/")
    root = tmp_path / "ksdd2"
    assert prepare_dataset(root, source.as_uri(), _sha(source)) == root
    # the archive's single top folder is unwrapped, so the layout is found at root
    assert sorted(index_layout("ksdd2", root)) == ["test", "train"]
    assert not (root / "KolektorSDD2").exists()
    source.unlink()
    assert prepare_dataset(root, source.as_uri(), None) == root  # no second download


def test_jobs_preparing_one_data_root_take_turns(tmp_path, monkeypatch):
    """A sweep's jobs starting together: one prepares the root while the others wait, and
    then find the data there rather than writing into the same part file."""
    source = _dataset_zip(tmp_path / "src" / "KolektorSDD2.zip", wrap="KolektorSDD2/")
    root = tmp_path / "ksdd2"
    locks = tmp_path / "tmp"  # where both look for the lock file, not the machine's /tmp
    locks.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(locks))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(locks)},
    )
    try:
        assert holder.stdout.readline() == "held\n"
        waiting = threading.Thread(target=prepare_dataset, args=(root, source.as_uri(), None))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and not root.exists()  # waits for the first job
        holder.communicate("\n", timeout=30)
        waiting.join(30)
    finally:
        holder.kill()
    assert not waiting.is_alive()
    assert sorted(index_layout("ksdd2", root)) == ["test", "train"]
    assert [path.name[:18] for path in locks.iterdir()] == ["crackseg-download-"]


_HOLD_THE_LOCK = """
import sys
from pathlib import Path
from crackseg.data.download import _one_process_at_a_time
with _one_process_at_a_time(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_download_refused_leaves_no_empty_data_root(tmp_path):
    """No network, a URL mistyped: the refusal's line, and no empty folder where the data
    was to go (a download cut half-way keeps its part, to resume from)."""
    root = tmp_path / "data" / "ksdd2"
    missing = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(DataError, match="cannot download"):
        prepare_dataset(root, missing, None)
    assert not (tmp_path / "data").exists()
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot download"):
        prepare_dataset(root, missing, None)
    assert list((tmp_path / "data").iterdir()) == []  # the folder that was there stays


def test_prepare_dataset_keeps_user_data(tmp_path):
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    url = (tmp_path / "absent.zip").as_uri()
    assert prepare_dataset(root, url, None) == root  # nothing fetched: the source is absent


# --- a download is pinned, or unchecked on purpose ----------------------------------------


def test_an_unpinned_download_is_refused_before_anything_is_fetched(tmp_path, archive):
    root = tmp_path / "ksdd2"
    result = run_entry(
        "train",
        "data=ksdd2",
        f"data.root={root}",
        f"data.download.url={archive.as_uri()}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    line = one_line_error(result)
    assert "data.download.sha256 is not set" in line and "data.download.sha256=null" in line
    assert not root.exists()  # nothing downloaded
    # the library refuses the same without the config check, and a malformed checksum too
    for sha256 in ("unpinned", "abc"):
        with pytest.raises(DataError):
            download_archive(archive.as_uri(), root, sha256)
        assert not any(root.glob("*.zip*"))


def _ksdd2_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", ["data=ksdd2", *overrides])


def test_an_explicit_null_checksum_downloads_unchecked_and_logs_it(tmp_path, caplog):
    source = _dataset_zip(tmp_path / "src" / "KolektorSDD2.zip", wrap="KolektorSDD2/")
    root = tmp_path / "ksdd2"
    url = f"data.download.url={source.as_uri()}"
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        check_config(_ksdd2_config(f"data.root={root}", url, "data.download.sha256=abc"))
    cfg = _ksdd2_config(f"data.root={root}", url, "data.download.sha256=null")
    check_config(cfg)
    with caplog.at_level(logging.WARNING):
        CrackDataModule.from_config(cfg.data).prepare_data()
    assert sorted(index_layout("ksdd2", root)) == ["test", "train"]
    assert _sha(source) in caplog.text and "cannot be verified" in caplog.text
    # the default config fetches nothing and asks for no checksum
    cfg = _ksdd2_config(f"data.root={tmp_path / 'mine'}")
    check_config(cfg)
    CrackDataModule.from_config(cfg.data).prepare_data()
    assert not (tmp_path / "mine").exists()
