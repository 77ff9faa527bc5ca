"""Flickr8k loader, tested offline on small archives built in the real formats."""
import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from minicap.data.flickr8k import load_flickr8k, read_token_file

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

SPLITS = {"train": ["a_1.jpg", "b_2.jpg", "c_3.jpg"], "dev": ["d_4.jpg"], "test": ["e_5.jpg"]}


def _jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _build(server, skip_caption=None, skip_image=None):
    """Write Flickr8k_Dataset.zip and Flickr8k_text.zip (real layout, tiny content) into ``server``."""
    server.mkdir(exist_ok=True)
    names = [n for split in SPLITS.values() for n in split]
    with zipfile.ZipFile(server / "Flickr8k_Dataset.zip", "w") as zipped:
        for i, name in enumerate(names):
            if name != skip_image:
                zipped.writestr(f"Flicker8k_Dataset/{name}", _jpeg((40 * i, 0, 0)))
        zipped.writestr("__MACOSX/Flicker8k_Dataset/._a_1.jpg", b"junk")
    lines = [f"{n}#{k}\t{n.split('_')[0].upper()} caption number {k} ." for n in names if n != skip_caption for k in (4, 3, 2, 1, 0)]
    lines.append("2258277193_586949ec62.jpg.1#0\tAn image in no split .")
    with zipfile.ZipFile(server / "Flickr8k_text.zip", "w") as zipped:
        zipped.writestr("Flickr8k.token.txt", "\n".join(lines) + "\n")
        for split, file in (("train", "trainImages"), ("dev", "devImages"), ("test", "testImages")):
            zipped.writestr(f"Flickr_8k.{file}.txt", "\n".join(SPLITS[split]) + "\n")
    return server.as_uri() + "/"


def _hashes(server):
    return {k: "sha256:" + hashlib.sha256((server / f).read_bytes()).hexdigest()
            for k, f in (("text", "Flickr8k_text.zip"), ("images", "Flickr8k_Dataset.zip"))}


def test_splits_captions_and_images(tmp_path):
    url = _build(tmp_path / "server")
    cache = tmp_path / "cache"
    train = load_flickr8k("train", cache, base_url=url, hashes=_hashes(tmp_path / "server"))
    assert len(train) == 3 and train.name == "flickr8k" and train.split == "train"
    assert [os.path.basename(p) for p in train.paths] == SPLITS["train"]
    path, captions = train[0]
    assert captions == [f"A caption number {k} ." for k in range(5)]  # in #N order
    assert os.path.dirname(path).endswith("Flicker8k_Dataset")
    images = train.load_images(8)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    dev = load_flickr8k("val", cache, base_url=url, hashes=_hashes(tmp_path / "server"))
    assert dev.split == "dev" and [os.path.basename(p) for p in dev.paths] == ["d_4.jpg"]
    assert len(load_flickr8k("test", cache, base_url=url, hashes=_hashes(tmp_path / "server"))) == 1


def test_cached_after_first_call(tmp_path):
    server = tmp_path / "server"
    url = _build(server)
    hashes = _hashes(server)
    load_flickr8k("train", tmp_path / "cache", base_url=url, hashes=hashes)
    for name in os.listdir(server):
        os.remove(server / name)  # the "server" is gone; the cache must serve the next call
    assert len(load_flickr8k("dev", tmp_path / "cache", base_url=url, hashes=hashes)) == 1


NO_HASHES = {"text": None, "images": None}


def test_captions_only(tmp_path):
    server = tmp_path / "server"
    url = _build(server)
    data = load_flickr8k("test", tmp_path / "cache", with_images=False, base_url=url, hashes=NO_HASHES)
    assert data.captions[0][0] == "E caption number 0 ."
    assert not os.path.exists(tmp_path / "cache" / "downloads" / "Flickr8k_Dataset.zip")


def test_wrong_checksum_is_refused(tmp_path):
    url = _build(tmp_path / "server")
    wrong = {"text": "sha256:" + "0" * 64, "images": None}
    with pytest.raises(ValueError, match="checksum mismatch.*Flickr8k_text.zip"):
        load_flickr8k("train", tmp_path / "cache", base_url=url, hashes=wrong)
    assert not os.path.exists(tmp_path / "cache" / "downloads" / "Flickr8k_text.zip")


def test_missing_caption_or_image_is_named(tmp_path):
    url = _build(tmp_path / "s1", skip_caption="b_2.jpg")
    with pytest.raises(ValueError, match="no caption.*b_2.jpg"):
        load_flickr8k("train", tmp_path / "c1", base_url=url, hashes=NO_HASHES)
    url = _build(tmp_path / "s2", skip_image="c_3.jpg")
    with pytest.raises(FileNotFoundError, match="c_3.jpg"):
        load_flickr8k("train", tmp_path / "c2", base_url=url, hashes=NO_HASHES)


def test_bad_split_and_malformed_token_file(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_flickr8k("validation", tmp_path)
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\tfine\nb.jpg no tab here\n")
    with pytest.raises(ValueError, match="line 2: expected 'IMAGE.jpg#N<TAB>caption'"):
        read_token_file(token)


def test_archive_member_outside_cache_is_refused(tmp_path):
    server = tmp_path / "server"
    url = _build(server)
    with zipfile.ZipFile(server / "Flickr8k_text.zip", "a") as zipped:
        zipped.writestr("../../outside.txt", "escape")
    with pytest.raises(ValueError, match="refusing to extract.*outside.txt"):
        load_flickr8k("train", tmp_path / "cache", base_url=url, hashes=NO_HASHES)
    assert not list(tmp_path.rglob("outside.txt"))
    assert not os.path.exists(tmp_path / "cache" / "downloads" / "Flickr8k_text.zip")


def test_a_photos_run_loads_flickr8k_from_a_mirror_with_verified_archives(tmp_path):
    from minicap.config import profile
    from minicap.data.datasets import load_data, load_real_split
    from minicap.data.images import ImageFiles
    from minicap.data.pipeline import CaptionBatches
    from minicap.text import Tokenizer

    url = _build(tmp_path / "server")
    hashes = _hashes(tmp_path / "server")
    config = profile("photos", data_dir=str(tmp_path / "data"), data_url=url, data_hashes=hashes, image_size=32)
    train, val = load_data(config)
    assert (len(train), len(val), val.split) == (3, 1, "dev")
    assert os.path.isdir(tmp_path / "data" / "flickr8k")
    assert isinstance(train.images, ImageFiles) and train.images.shape == (3, 32, 32, 3)
    assert train.images[[2, 0]].shape == (2, 32, 32, 3) and train.images[1].shape == (32, 32, 3)
    tok = Tokenizer.fit([c for refs in train.captions for c in refs])
    (x, tokens), _ = CaptionBatches(train.images, train.captions, tok, 8, batch_size=4)[0]
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    with pytest.raises(ValueError, match="unknown dataset 'flickr30k'"):
        load_real_split(profile("quick", dataset="flickr30k"), "train")
    with pytest.raises(ValueError, match=r"data_hashes for flickr8k name unknown archives \['photos'\]"):
        load_data(profile("photos", data_hashes={"photos": "md5:0"}))
    with pytest.raises(ValueError, match="checksum mismatch"):  # a mirror's archives are still verified
        load_data(profile("photos", data_dir=str(tmp_path / "other"), data_url=url))
    with pytest.raises(ValueError, match="no image_size"):
        load_flickr8k("dev", tmp_path / "data" / "flickr8k", base_url=url, hashes=NO_HASHES).images
