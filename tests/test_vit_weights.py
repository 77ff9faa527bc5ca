"""Tests for minicap.vit_weights: the ViT weight files from a local path, a mirror or GitHub, verified.

Nothing here reaches GitHub: the "GitHub" release is a closed port on 127.0.0.1 (unreachable) or a folder
served from 127.0.0.1, and the mirror is a folder served the same way (or a local folder).
"""
import hashlib
import os
import socket

import pytest

from tests.support import require
from minicap import vit_weights
from minicap.config import VIT_WEIGHTS
from minicap.vit_weights import GITHUB_RELEASE_URL, weights_file, weights_file_name
from tests.support.photo_stand_ins import serve

# Independent of Keras's backend: runs once, on the default one.
pytestmark = pytest.mark.single_backend

NAME = "ViT-B_32_imagenet21k+imagenet2012.npz"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No mirror set, GitHub a closed port on 127.0.0.1, an empty cache; yield the cache folder."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setattr(vit_weights, "GITHUB_RELEASE_URL", f"http://127.0.0.1:{port}/dl")
    monkeypatch.delenv(vit_weights.MIRROR_VARIABLE, raising=False)
    cache = tmp_path / "keras_home" / "weights"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return cache


def folder_with(path, data=b"weights of the mirror"):
    path.mkdir(parents=True, exist_ok=True)
    (path / NAME).write_bytes(data)
    return path, data


def test_names_resolve_to_the_official_file_names():
    assert weights_file_name("vit-b32", "imagenet21k+imagenet2012") == NAME
    assert weights_file_name("vit-b16", "imagenet21k") == "ViT-B_16_imagenet21k.npz"
    assert VIT_WEIGHTS == ("imagenet21k+imagenet2012", "imagenet21k")
    with pytest.raises(ValueError, match=r"must be one of \['imagenet21k\+imagenet2012', 'imagenet21k'\]"):
        weights_file("imagenet", "vit-b32")
    with pytest.raises(ValueError, match="exist for the variants .* got variant None"):
        weights_file("imagenet21k", None)


def test_github_address_is_vit_keras_release():
    vit = require("vit_keras.vit", "vit-keras (the optional 'vit' extra) is not installed")
    assert GITHUB_RELEASE_URL == vit.BASE_URL


def test_a_local_path_is_used_as_it_is_and_checked_against_a_given_digest(tmp_path, offline):
    path = tmp_path / "my weights.npz"
    path.write_bytes(b"local weights")
    assert weights_file(str(path), "vit-b32") == str(path)
    assert weights_file(str(path), "vit-b32", file_hash=sha256(b"local weights")) == str(path)
    with pytest.raises(ValueError, match="checksum mismatch for .*my weights.npz"):
        weights_file(str(path), "vit-b32", file_hash=sha256(b"other"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        weights_file(str(tmp_path / "missing.npz"), "vit-b32")
    with pytest.raises(ValueError, match="file_hash must be 'sha256:<64 hex digits>'"):
        weights_file(str(path), "vit-b32", file_hash="sha256:xyz")


def test_the_mirror_is_downloaded_verified_cached_and_then_used_offline(tmp_path, offline, monkeypatch):
    mirror, data = folder_with(tmp_path / "mirror")
    with serve(mirror) as url:
        monkeypatch.setenv(vit_weights.MIRROR_VARIABLE, url)
        path = weights_file("imagenet21k+imagenet2012", "vit-b32", file_hash=sha256(data), progress=False)
    assert path == str(offline / NAME) and open(path, "rb").read() == data
    monkeypatch.delenv(vit_weights.MIRROR_VARIABLE)  # the server is gone too: the cache serves
    assert weights_file("imagenet21k+imagenet2012", "vit-b32", file_hash=sha256(data)) == path


@pytest.mark.parametrize("form", ["folder", "file-url"])
def test_a_mirror_may_be_a_local_folder_or_a_file_url(tmp_path, offline, form):
    mirror, data = folder_with(tmp_path / "mirror")
    address = str(mirror) if form == "folder" else mirror.as_uri()
    path = weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=address, progress=False)
    assert open(path, "rb").read() == data


def test_the_mirror_comes_before_github(tmp_path, offline, monkeypatch):
    mirror, data = folder_with(tmp_path / "mirror")
    github, _ = folder_with(tmp_path / "github", b"weights of github")
    with serve(github) as github_url, serve(mirror) as mirror_url:
        monkeypatch.setattr(vit_weights, "GITHUB_RELEASE_URL", github_url.rstrip("/"))
        path = weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=mirror_url, progress=False)
        assert open(path, "rb").read() == data
        os.remove(path)
        os.remove(path + ".sha256")
        path = weights_file("imagenet21k+imagenet2012", "vit-b32", progress=False)  # no mirror: GitHub
        assert open(path, "rb").read() == b"weights of github"


def test_without_a_digest_the_first_download_is_recorded_and_a_damaged_file_replaced(tmp_path, offline):
    mirror, data = folder_with(tmp_path / "mirror")
    path = weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=str(mirror), progress=False)
    assert open(path + ".sha256").read() == hashlib.sha256(data).hexdigest()
    with open(path, "ab") as file:
        file.write(b"damage")
    assert open(weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=str(mirror), progress=False),
                "rb").read() == data


def test_nothing_reachable_names_the_local_file_the_mirror_and_github(tmp_path, offline):
    with pytest.raises(FileNotFoundError) as error:
        weights_file("imagenet21k+imagenet2012", "vit-b32", progress=False)
    message = str(error.value)
    assert f"1. a local file: no verified {offline / NAME}; or pass backbone_weights='/path/to/{NAME}'" in message
    assert "2. the mirror: none set (set MINICAP_VIT_MIRROR" in message
    assert f"3. GitHub: {vit_weights.GITHUB_RELEASE_URL}/{NAME}: " in message and "refused" in message
    assert not offline.exists() or os.listdir(offline) == []  # no partial file left


def test_a_corrupt_mirror_file_is_deleted_and_reported(tmp_path, offline):
    mirror, data = folder_with(tmp_path / "mirror", b"corrupted")
    with serve(mirror) as url:
        with pytest.raises(FileNotFoundError, match=r"the mirror: .*checksum mismatch"):
            weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=url, file_hash=sha256(b"the real file"),
                         progress=False)
    assert os.listdir(offline) == []
    with pytest.raises(ValueError, match="MINICAP_VIT_MIRROR .* is neither"):
        weights_file("imagenet21k+imagenet2012", "vit-b32", mirror=str(tmp_path / "no such folder"))
