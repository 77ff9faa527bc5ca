"""Tests for download, checksum, cache and safe extraction (offline: file:// URLs only)."""
import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from minicap.data import download
from minicap.data.download import extract, fetch, fetch_and_extract, find_file

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend


def _source(tmp_path, data=b"minicap data " * 100, name="data.bin"):
    path = tmp_path / "server" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path.as_uri(), data


def _sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_fetch_downloads_verifies_and_caches(tmp_path, monkeypatch):
    url, data = _source(tmp_path)
    cache = tmp_path / "cache"
    path = fetch(url, cache, file_hash=_sha256(data))
    assert open(path, "rb").read() == data and os.path.basename(path) == "data.bin"
    calls = []
    monkeypatch.setattr(download, "urlopen", lambda u: calls.append(u))
    assert fetch(url, cache, file_hash=_sha256(data)) == path
    assert calls == []  # cached: no second download
    md5 = "md5:" + hashlib.md5(data).hexdigest()
    assert fetch(url, cache, file_hash=md5) == path


def test_checksum_mismatch_deletes_and_next_call_downloads_again(tmp_path):
    url, data = _source(tmp_path, b"corrupted bytes")
    cache = tmp_path / "cache"
    good = b"the real archive"
    with pytest.raises(ValueError, match="checksum mismatch for file:.*data.bin.*deleted"):
        fetch(url, cache, file_hash=_sha256(good))
    assert os.listdir(cache) == []  # neither the file nor a partial one is left
    _source(tmp_path, good)  # the server now serves the right file
    assert open(fetch(url, cache, file_hash=_sha256(good)), "rb").read() == good


def test_cached_file_that_no_longer_matches_is_replaced(tmp_path):
    url, data = _source(tmp_path)
    cache = tmp_path / "cache"
    path = fetch(url, cache)  # no hash: the first download's SHA-256 is recorded
    assert open(path + ".sha256").read() == hashlib.sha256(data).hexdigest()
    with open(path, "ab") as file:
        file.write(b"damage")
    assert open(fetch(url, cache), "rb").read() == data


class _Truncated:
    """A response announcing more bytes than it delivers, like a dropped connection."""

    headers = {"Content-Length": "1000"}

    def __init__(self, url):
        self.body = io.BytesIO(b"only part")

    def read(self, size):
        return self.body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_interrupted_download_is_deleted(tmp_path, monkeypatch):
    url, data = _source(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setattr(download, "urlopen", _Truncated)
    with pytest.raises(ValueError, match="interrupted download.*received 9 of 1000 bytes"):
        fetch(url, cache)
    assert os.listdir(cache) == []
    monkeypatch.undo()
    assert open(fetch(url, cache), "rb").read() == data


def test_bad_hash_argument(tmp_path):
    url, _ = _source(tmp_path)
    with pytest.raises(ValueError, match="file_hash must be"):
        fetch(url, tmp_path / "cache", file_hash="crc32:1234")


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return path


def test_extract_zip_and_tar(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"folder/x.txt": "x", "y.txt": "y"})
    out = extract(archive, tmp_path / "out")
    assert open(find_file(out, "x.txt")).read() == "x"
    assert os.path.exists(os.path.join(out, ".extracted-a.zip"))
    tar_path = tmp_path / "b.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tarred:
        info = tarfile.TarInfo("inner/z.txt")
        info.size = 1
        tarred.addfile(info, io.BytesIO(b"z"))
    extract(tar_path, tmp_path / "out")
    assert (tmp_path / "out" / "inner" / "z.txt").read_text() == "z"


@pytest.mark.parametrize("name", ["../escape.txt", "folder/../../escape.txt", "/tmp/minicap-escape.txt"])
def test_extract_refuses_zip_members_outside(tmp_path, name):
    archive = _zip(tmp_path / "evil.zip", {"ok.txt": "fine", name: "bad"})
    with pytest.raises(ValueError, match="refusing to extract.*would land outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing is written before the check


def test_extract_refuses_tar_links_outside(tmp_path):
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tarred:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../etc/passwd"
        tarred.addfile(link)
    with pytest.raises(ValueError, match="member 'link' links to"):
        extract(tar_path, tmp_path / "out")


def test_extract_rejects_non_archive_and_corrupt_download(tmp_path):
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(ValueError, match="not a zip or tar archive"):
        extract(tmp_path / "plain.txt", tmp_path / "out")
    url, _ = _source(tmp_path, b"PK\x03\x04 broken zip", name="broken.zip")
    with pytest.raises(ValueError, match="broken.zip"):
        fetch_and_extract(url, tmp_path / "cache")
    assert not os.path.exists(tmp_path / "cache" / "downloads" / "broken.zip")
