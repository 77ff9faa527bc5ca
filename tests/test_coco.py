"""COCO captions loader, tested offline on small archives built in the real formats."""
import io
import json
import os
import zipfile

import pytest
from PIL import Image

from minicap.data.coco import load_coco

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend

NO_HASHES = {"annotations": None, "karpathy": None, "train2014": None, "val2014": None}


def _jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 90, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def _build(server):
    """annotations_trainval2014.zip, caption_datasets.zip, train2014.zip and val2014.zip, tiny."""
    server.mkdir()
    files = {"train2014": [(1, "COCO_train2014_000000000001.jpg"), (2, "COCO_train2014_000000000002.jpg"),
                           (3, "COCO_train2014_000000000003.jpg")],
             "val2014": [(7, "COCO_val2014_000000000007.jpg"), (8, "COCO_val2014_000000000008.jpg")]}
    with zipfile.ZipFile(server / "annotations_trainval2014.zip", "w") as zipped:
        for folder, images in files.items():
            annotations = [{"id": 100 * i + k, "image_id": i, "caption": f"image {i} caption {k} "}
                           for i, _ in images if i != 3 for k in range(5)]  # image 3 has no caption
            data = {"images": [{"id": i, "file_name": f, "width": 10, "height": 10} for i, f in images],
                    "annotations": annotations}
            zipped.writestr(f"annotations/captions_{folder}.json", json.dumps(data))
    karpathy = {"images": [
        {"filepath": "train2014", "filename": files["train2014"][0][1], "split": "train",
         "sentences": [{"raw": f"train one {k}", "tokens": ["train", "one", str(k)]} for k in range(5)]},
        {"filepath": "val2014", "filename": files["val2014"][0][1], "split": "restval",
         "sentences": [{"tokens": ["restval", "tokens", str(k)]} for k in range(5)]},
        {"filepath": "val2014", "filename": files["val2014"][1][1], "split": "test",
         "sentences": [{"raw": f"test {k}", "tokens": []} for k in range(5)]},
    ], "dataset": "coco"}
    with zipfile.ZipFile(server / "caption_datasets.zip", "w") as zipped:
        zipped.writestr("dataset_coco.json", json.dumps(karpathy))
        zipped.writestr("dataset_flickr8k.json", json.dumps({"images": []}))
    for folder, images in files.items():
        with zipfile.ZipFile(server / f"{folder}.zip", "w") as zipped:
            for _, name in images:
                zipped.writestr(f"{folder}/{name}", _jpeg())
    return {key: (server / f"{name}.zip").as_uri() for key, name in (
        ("annotations", "annotations_trainval2014"), ("karpathy", "caption_datasets"),
        ("train2014", "train2014"), ("val2014", "val2014"))}


@pytest.fixture
def urls(tmp_path):
    return _build(tmp_path / "server")


def test_official_splits(tmp_path, urls):
    train = load_coco("train", tmp_path / "cache", karpathy=False, urls=urls, hashes=NO_HASHES)
    assert [os.path.basename(p) for p in train.paths] == ["COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"]
    assert train.captions[1] == [f"image 2 caption {k}" for k in range(5)]
    assert all(os.path.isfile(p) for p in train.paths)
    assert train.load_images(4).shape == (2, 4, 4, 3)
    val = load_coco("val", tmp_path / "cache", karpathy=False, urls=urls, hashes=NO_HASHES)
    assert len(val) == 2 and "val2014" in val.paths[0]


def test_karpathy_split(tmp_path, urls):
    train = load_coco("train", tmp_path / "cache", urls=urls, hashes=NO_HASHES)
    assert len(train) == 2  # "train" plus "restval"
    assert train.captions[0][0] == "train one 0" and train.captions[1][2] == "restval tokens 2"
    assert all(os.path.isfile(p) for p in train.paths)
    only_train = load_coco("train", tmp_path / "cache", restval=False, urls=urls, hashes=NO_HASHES)
    assert len(only_train) == 1
    test = load_coco("test", tmp_path / "cache", urls=urls, hashes=NO_HASHES)
    assert test.captions == [[f"test {k}" for k in range(5)]]


def test_karpathy_file_given(tmp_path, urls):
    split_file = tmp_path / "dataset_coco.json"
    with zipfile.ZipFile(tmp_path / "server" / "caption_datasets.zip") as zipped:
        split_file.write_bytes(zipped.read("dataset_coco.json"))
    data = load_coco("test", tmp_path / "cache", karpathy=split_file, with_images=False, urls=urls, hashes=NO_HASHES)
    assert len(data) == 1
    assert not os.path.exists(tmp_path / "cache" / "downloads" / "caption_datasets.zip")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_coco("test", tmp_path / "cache", karpathy=tmp_path / "nowhere.json")


def test_errors(tmp_path, urls):
    with pytest.raises(ValueError, match="split must be one of"):
        load_coco("test", tmp_path / "cache", karpathy=False, urls=urls)
    with pytest.raises(ValueError, match="split must be one of"):
        load_coco("dev", tmp_path / "cache", urls=urls)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="bad.json.*keys"):
        load_coco("train", tmp_path / "cache", karpathy=bad, with_images=False)
    bad.write_text(json.dumps({"images": [{"filename": "x.jpg"}]}))
    with pytest.raises(ValueError, match="bad.json.*malformed"):
        load_coco("train", tmp_path / "cache", karpathy=bad, with_images=False)
    os.remove(tmp_path / "server" / "val2014.zip")
    with zipfile.ZipFile(tmp_path / "server" / "val2014.zip", "w") as zipped:
        zipped.writestr("val2014/other.jpg", _jpeg())
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000007.jpg"):
        load_coco("val", tmp_path / "cache2", karpathy=False, urls=urls, hashes=NO_HASHES)
