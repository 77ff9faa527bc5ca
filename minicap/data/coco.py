"""COCO captions (2014): about 120,000 photographs with 5 captions each (chapter 5).

Two ways to split it:

* the official 2014 splits: ``captions_train2014.json`` / ``captions_val2014.json`` from
  ``annotations_trainval2014.zip`` (``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``), photos in ``train2014/`` and ``val2014/``;
* the Karpathy split used by most captioning papers: ``dataset_coco.json`` from
  ``caption_datasets.zip`` (``{"images": [{"filepath", "filename", "split", "sentences":
  [{"raw", "tokens"}]}]}``) with 113,287 train (``"restval"`` included) / 5,000 val / 5,000 test.

:func:`load_coco` downloads what it needs on demand (the photos are 13 GB + 6 GB), verifies and
caches it.
"""
import json
import os

from minicap.data.download import default_cache_dir, fetch_and_extract, find_file
from minicap.data.records import CaptionSet

__all__ = ["load_coco", "read_karpathy", "read_official"]

IMAGES_BASE_URL = "http://images.cocodataset.org/zips/"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
# MD5 of caption_datasets.zip as the mlverse torchvision (R) loaders check it. The COCO archives
# have no published digest here: the SHA-256 of the first download is recorded and checked after.
HASHES = {"karpathy": "md5:4fa8c08369d22fe16e41dc124bd1adc2", "annotations": None, "train2014": None, "val2014": None}
OFFICIAL_SPLITS = {"train": "train2014", "val": "val2014"}
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _read_json(path, required):
    """Load a JSON object from ``path`` and check it has the ``required`` keys."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise ValueError(f"{os.fspath(path)!r} is not a COCO caption file: expected a JSON object with keys {required}")
    return data


def read_official(annotation_file, image_directory):
    """``(paths, captions)`` from a ``captions_*2014.json`` file; images without captions are skipped."""
    data = _read_json(annotation_file, ["images", "annotations"])
    captions = {}
    try:
        for annotation in data["annotations"]:
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        images = [(image["id"], image["file_name"]) for image in data["images"]]
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{os.fspath(annotation_file)!r}: malformed image or annotation entry ({error!r})") from None
    images = sorted((i for i in images if i[0] in captions), key=lambda i: i[0])
    return [os.path.join(image_directory, name) for _, name in images], [captions[i] for i, _ in images]


def read_karpathy(split_file, image_root, split, restval=True):
    """``(paths, captions)`` of one split of a Karpathy ``dataset_coco.json`` file.

    With ``restval=True`` the ``"restval"`` images join ``"train"``, as in Karpathy and Fei-Fei (2015).
    """
    data = _read_json(split_file, ["images"])
    wanted = {split, "restval"} if split == "train" and restval else {split}
    paths, captions = [], []
    try:
        for image in data["images"]:
            if image["split"] not in wanted:
                continue
            sentences = [s.get("raw") or " ".join(s["tokens"]) for s in image["sentences"]]
            paths.append(os.path.join(image_root, image.get("filepath", ""), image["filename"]))
            captions.append([s.strip() for s in sentences])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{os.fspath(split_file)!r}: malformed image entry ({error!r})") from None
    return paths, captions


def load_coco(split="train", cache_dir=None, karpathy=True, restval=True, with_images=True, urls=None, hashes=None,
              image_size=None, extract_dir=None):
    """Load COCO captions, downloading and extracting what is needed.

    Args:
        split: with the Karpathy split ``"train"``, ``"val"``, ``"test"`` (or ``"restval"``);
            with the official split ``"train"`` or ``"val"``.
        cache_dir: where to keep archives and files (default ``default_cache_dir()/coco``).
        karpathy: ``True`` to use the Karpathy split (downloads ``caption_datasets.zip``), a path
            to a ``dataset_coco.json`` you have, or ``False`` for the official 2014 splits.
        restval: with the Karpathy split, count ``"restval"`` images as training images.
        with_images: download/extract the photos the split needs and check they exist.
        urls, hashes: override ``{"annotations", "karpathy", "train2014", "val2014"}`` URLs and
            digests (e.g. a local mirror or ``file://`` archives).
        image_size: the size the returned set's ``images`` resize to (int or ``(height, width)``).
        extract_dir: where the archives are unpacked (default ``cache_dir``), e.g. a fast local disk
            while ``cache_dir`` (the archives, in ``cache_dir/downloads``) is a network drive.

    Returns:
        a :class:`~minicap.data.records.CaptionSet`.
    """
    cache_dir = os.fspath(cache_dir or os.path.join(default_cache_dir(), "coco"))
    root = os.fspath(extract_dir or cache_dir)
    urls = {
        "annotations": ANNOTATIONS_URL, "karpathy": KARPATHY_URL,
        "train2014": IMAGES_BASE_URL + "train2014.zip", "val2014": IMAGES_BASE_URL + "val2014.zip",
    } | dict(urls or {})
    hashes = HASHES | dict(hashes or {})

    def ensure(key):
        return fetch_and_extract(urls[key], cache_dir, hashes[key], destination=root)

    if karpathy is not False:
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"with the Karpathy split, split must be one of {KARPATHY_SPLITS}, got {split!r}")
        if karpathy is True:
            split_file = find_file(ensure("karpathy"), "dataset_coco.json")
        else:
            split_file = os.fspath(karpathy)
            if not os.path.isfile(split_file):
                raise FileNotFoundError(f"Karpathy split file {split_file!r} does not exist")
        paths, captions = read_karpathy(split_file, root, split, restval)
        folders = sorted({os.path.basename(os.path.dirname(p)) for p in paths})
    else:
        if split not in OFFICIAL_SPLITS:
            raise ValueError(f"with the official 2014 splits, split must be one of {tuple(OFFICIAL_SPLITS)}, got {split!r}")
        folder = OFFICIAL_SPLITS[split]
        annotation_file = find_file(ensure("annotations"), f"captions_{folder}.json")
        paths, captions = read_official(annotation_file, os.path.join(root, folder))
        folders = [folder]
    if with_images:
        for folder in folders:
            if folder not in ("train2014", "val2014"):
                raise ValueError(f"unknown COCO image folder {folder!r} in the split file; expected train2014 or val2014")
            ensure(folder)
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(f"{len(absent)} image(s) of the {split} split are missing, e.g. {absent[0]!r}")
    return CaptionSet(paths, captions, split, "coco", image_size)
