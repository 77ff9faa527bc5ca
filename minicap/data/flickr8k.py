"""Flickr8k: 8,091 photographs with 5 captions each, and the official splits (chapter 5).

Hodosh, Young and Hockenmaier (2013) released two archives: ``Flickr8k_Dataset.zip`` with the
photos in ``Flicker8k_Dataset/`` (sic) and ``Flickr8k_text.zip`` with the captions in
``Flickr8k.token.txt`` (one ``IMAGE.jpg#N<TAB>caption`` line per caption) and the official
6,000 / 1,000 / 1,000 split lists ``Flickr_8k.trainImages.txt``, ``devImages``, ``testImages``.
:func:`load_flickr8k` downloads both on demand (about 1 GB), verifies and caches them.
"""
import os
import warnings

from minicap.data.download import default_cache_dir, fetch_and_extract, find_directory, find_file
from minicap.data.records import CaptionSet

__all__ = ["load_flickr8k", "read_token_file", "read_split_file", "read_text_lines"]

BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
# MD5 digests of the two archives at BASE_URL, as the mlverse torchvision (R) Flickr8k loader checks them.
ARCHIVES = {
    "text": ("Flickr8k_text.zip", "md5:bf6c1abcb8e4a833b7f922104de18627"),
    "images": ("Flickr8k_Dataset.zip", "md5:f18a1e2920de5bd84dae7cf08ec78978"),
}
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
TOKEN_FILE = "Flickr8k.token.txt"
IMAGE_DIRECTORY = "Flicker8k_Dataset"


def read_text_lines(path):
    """The lines of a UTF-8 text file. Empty lines are kept (callers skip them); bytes that are not
    UTF-8 are replaced by U+FFFD (which the tokenizer drops as punctuation) with a warning naming the
    file and the lines, rather than failing the whole data set on one bad byte."""
    with open(path, "rb") as file:
        raw_lines = file.read().splitlines()
    lines, bad = [], []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("utf-8", errors="replace"))
            bad.append(number)
    if bad:
        warnings.warn(f"{os.fspath(path)!r}: lines {bad[:10]}{' ...' if len(bad) > 10 else ''} are not valid UTF-8; "
                      f"their undecodable bytes were replaced", stacklevel=2)
    return lines


def read_token_file(path):
    """``{image name: [caption, ...]}`` from a ``Flickr8k.token.txt`` file, captions in ``#N`` order.

    Empty lines are skipped; see :func:`read_text_lines` for bytes that are not UTF-8.
    """
    numbered = {}
    for line_number, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, number = key.partition("#")
        if not tab or not hash_sign or not number.strip().isdigit() or not caption.strip():
            raise ValueError(
                f"{os.fspath(path)!r} line {line_number}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:80]!r}"
            )
        numbered.setdefault(name.strip(), []).append((int(number), caption.strip()))
    return {name: [c for _, c in sorted(entries)] for name, entries in numbered.items()}


def read_split_file(path):
    """Image names listed in a ``Flickr_8k.*Images.txt`` file, one per line."""
    return [line.strip() for line in read_text_lines(path) if line.strip()]


def load_flickr8k(split="train", cache_dir=None, with_images=True, base_url=BASE_URL, hashes=None, image_size=None,
                  extract_dir=None):
    """Load one official Flickr8k split, downloading and extracting the archives if needed.

    Args:
        split: ``"train"`` (6,000 images), ``"dev"`` (1,000; ``"val"`` is accepted too) or
            ``"test"`` (1,000).
        cache_dir: where to keep the archives and extracted files (default
            ``default_cache_dir()/flickr8k``).
        with_images: also download/extract the photos and check that each image of the split
            exists; ``False`` reads the captions only (a 2 MB download).
        base_url: where the two archives are (any URL that ends with ``/``, ``file://`` too).
        hashes: ``{"text": ..., "images": ...}`` digests overriding ``ARCHIVES``' (``None``
            values skip the check and record the first download's SHA-256 instead).
        image_size: the size the returned set's ``images`` resize to (int or ``(height, width)``).
        extract_dir: where the archives are unpacked (default ``cache_dir``), e.g. a fast local disk
            while ``cache_dir`` (the archives, in ``cache_dir/downloads``) is a network drive.

    Returns:
        a :class:`~minicap.data.records.CaptionSet` of image paths and their 5 captions.
    """
    split = {"val": "dev"}.get(split, split)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {tuple(SPLIT_FILES)} (or 'val' for 'dev'), got {split!r}")
    cache_dir = os.fspath(cache_dir or os.path.join(default_cache_dir(), "flickr8k"))
    hashes = {key: file_hash for key, (_, file_hash) in ARCHIVES.items()} | dict(hashes or {})
    destination = os.fspath(extract_dir or cache_dir)
    root = fetch_and_extract(base_url + ARCHIVES["text"][0], cache_dir, hashes["text"], destination)
    if with_images:
        fetch_and_extract(base_url + ARCHIVES["images"][0], cache_dir, hashes["images"], destination)
    token_file = find_file(root, TOKEN_FILE)
    captions = read_token_file(token_file)
    names = read_split_file(find_file(root, SPLIT_FILES[split]))
    missing = [n for n in names if n not in captions]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the {split} split have no caption in {token_file!r}, e.g. {missing[0]!r}"
        )
    try:
        image_directory = find_directory(root, IMAGE_DIRECTORY)
    except FileNotFoundError:
        if with_images:
            raise
        image_directory = os.path.join(root, IMAGE_DIRECTORY)
    paths = [os.path.join(image_directory, name) for name in names]
    if with_images:
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(f"{len(absent)} image(s) of the {split} split are missing, e.g. {absent[0]!r}")
    return CaptionSet(paths, [captions[n] for n in names], split, "flickr8k", image_size)
