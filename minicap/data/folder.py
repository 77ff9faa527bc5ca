"""Your own captioned images: a folder with a ``captions.csv`` (chapter 5).

The file has a header row ``image,caption`` (or ``image,caption,split``) and one row per caption,
so an image with five captions has five rows; captions that contain commas are quoted, as any
spreadsheet writes them::

    image,caption
    dog.jpg,A dog runs on the beach .
    dog.jpg,"A brown dog, wet from the sea ."

The widely used Kaggle copy of Flickr8k is this format too: ``captions.txt`` beside ``Images/``.
Image paths are relative to the file's folder (``Images/`` and ``images/`` are searched as well),
or absolute. Without a ``split`` column a fixed tenth of the images, chosen by file name, is the
validation split.
"""
import concurrent.futures
import csv
import hashlib
import os
import posixpath
import warnings

from tqdm.auto import tqdm

from minicap.data.flickr8k import read_text_lines
from minicap.data.images import size_pair, load_image
from minicap.data.records import CaptionSet

__all__ = ["load_caption_folder", "find_caption_file", "read_caption_rows", "find_image", "validation_images"]

CAPTION_FILES = ("captions.csv", "captions.txt")
IMAGE_FOLDERS = ("Images", "images")  # also searched for images, beside the caption file
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}
CHECK_SIZE = 32  # images are decoded at this size to check them (JPEGs at 1/8 scale)
BAR_ABOVE = 500  # check images with a progress bar when there are more than this many
MAX_REPORTED = 50  # bad rows listed in the warning


def find_caption_file(path):
    """The caption file of ``path``: ``path`` itself if it is a file, else the folder's
    ``captions.csv`` or ``captions.txt``."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} does not exist; expected a folder with {' or '.join(CAPTION_FILES)}, "
                                f"or a CSV file")
    for name in CAPTION_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"folder {path!r} has no {' or '.join(CAPTION_FILES)}; expected one of them with "
                            f"a header row 'image,caption' and one row per caption")


def read_caption_rows(csv_path):
    """``(rows, problems, has_split)`` of a caption file: ``rows`` are ``(line, image, caption,
    split)`` (``split`` is None without a split column, ``image`` is normalised so that ``./a.jpg``
    and ``a.jpg`` are one image); ``problems`` are ``(line, message)`` of skipped rows. Line
    numbers are the file's physical lines (header = line 1)."""
    lines = read_text_lines(csv_path)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a byte-order mark, as Excel writes
    reader = csv.reader(line + "\n" for line in lines)
    try:
        header = next(reader, [])
        columns = [name.strip().lower() for name in header]
        if sorted(columns) not in (["caption", "image"], ["caption", "image", "split"]):
            raise ValueError(f"{csv_path!r} line 1: header {','.join(header)!r}; expected 'image,caption' or "
                             f"'image,caption,split' (in any order)")
        image_column, caption_column = columns.index("image"), columns.index("caption")
        split_column = columns.index("split") if "split" in columns else None
        rows, problems, last_line = [], [], reader.line_num
        for row in reader:
            line, last_line = last_line + 1, reader.line_num  # a quoted caption may span lines
            if not row or not any(field.strip() for field in row):
                continue
            if len(row) != len(columns):
                hint = " (quote captions that contain commas)" if len(row) > len(columns) else ""
                problems.append((line, f"expected {len(columns)} columns, got {len(row)}{hint}"))
                continue
            image, caption = row[image_column].strip(), row[caption_column].strip()
            split = None
            if split_column is not None:
                split = SPLIT_NAMES.get(row[split_column].strip().lower())
                if split is None:
                    problems.append((line, f"unknown split {row[split_column]!r} (expected train, val or test)"))
                    continue
            if not image:
                problems.append((line, "empty image name"))
            elif not caption:
                problems.append((line, "empty caption"))
            else:
                if not os.path.isabs(image):
                    image = posixpath.normpath(image.replace("\\", "/"))
                rows.append((line, image, caption, split))
    except csv.Error as error:
        raise ValueError(f"{csv_path!r} line {reader.line_num}: not a readable CSV row ({error})") from None
    return rows, problems, split_column is not None


def find_image(folder, name):
    """The file of image ``name`` (relative to ``folder``, or in its ``Images/``), or None."""
    if os.path.isabs(name):
        return name if os.path.isfile(name) else None
    for candidate in (os.path.join(folder, name), *(os.path.join(folder, sub, name) for sub in IMAGE_FOLDERS)):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def validation_images(names, val_fraction):
    """The names of the validation images: ``round(val_fraction * n)`` of them (at least 1, at
    most ``n - 1``; none when ``val_fraction`` is 0), those whose SHA-256 ranks first. Only the
    names decide: not the rows' order, nor where the folder is."""
    names = sorted(set(names))
    if val_fraction == 0 or len(names) < 2:
        return set()
    count = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    ranked = sorted(names, key=lambda name: (hashlib.sha256(name.encode("utf-8")).hexdigest(), name))
    return set(ranked[:count])


def _unreadable(path):
    """Why ``path`` cannot be read as an image, or None."""
    try:
        load_image(path, CHECK_SIZE)
    except (OSError, ValueError) as error:
        return str(error).removeprefix(f"cannot read image file {path!r}: ")
    return None


def load_caption_folder(path, split="train", image_size=None, val_fraction=0.1, check_images=True):
    """Load captioned images from a folder with ``captions.csv`` (or ``captions.txt``), or a CSV file.

    Rows that cannot be used are skipped and listed in one warning with their line numbers (an
    image that is missing or unreadable drops all its rows): a handful of broken rows should not
    stop a data set of thousands. Images and rows of the other splits are not checked.

    Args:
        path: a folder holding ``captions.csv`` or ``captions.txt`` (UTF-8, a byte-order mark is
            fine) and the images, or the caption file itself.
        split: ``"train"``, ``"val"`` (``"dev"`` and ``"validation"`` mean the same), ``"test"``
            or ``"all"``. With a ``split`` column the file decides; without one, ``val_fraction``
            of the images (chosen by file name) is ``"val"``, the rest ``"train"``, and there is
            no ``"test"``.
        image_size: the size the returned set's ``images`` resize to (int or ``(height, width)``).
        val_fraction: the share of images in ``"val"`` without a split column, in [0, 1).
        check_images: decode every image of the split once (small, so it is quick) and skip
            those that cannot be read, rather than failing in the middle of training.

    Returns:
        a :class:`~minicap.data.records.CaptionSet` named after the folder, images in the order
        they first appear, each with its captions in file order.

    Raises:
        FileNotFoundError: no such folder or file, or no caption file in the folder.
        ValueError: a bad header, argument, or a split without images.
    """
    wanted = SPLIT_NAMES.get(split, split)
    if wanted not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be 'train', 'val' (or 'dev', 'validation'), 'test' or 'all', got {split!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    size_pair(image_size)  # a bad size fails here, not when the images are first read
    csv_path = find_caption_file(path)
    folder = os.path.dirname(os.path.abspath(csv_path))
    rows, problems, has_split_column = read_caption_rows(csv_path)

    # One split per image: the file's (the first row's, if rows disagree) or the name's rank.
    first_line, split_of = {}, {}
    for line, image, _, row_split in rows:
        first_line.setdefault(image, line)
        split_of.setdefault(image, row_split)
    if not has_split_column:
        val = validation_images(split_of, val_fraction)
        split_of = {image: "val" if image in val else "train" for image in split_of}
    kept = []
    for line, image, caption, row_split in rows:
        if row_split is not None and row_split != split_of[image]:
            problems.append((line, f"image {image!r} is in the {row_split} split here but in {split_of[image]} "
                                   f"on line {first_line[image]}"))
        elif wanted in ("all", split_of[image]):
            kept.append((line, image, caption))

    images = list(dict.fromkeys(image for _, image, _ in kept))
    files = {image: find_image(folder, image) for image in images}
    broken = {image: f"image {image!r} does not exist" for image, file in files.items() if file is None}
    if check_images:
        present = [image for image in images if files[image] is not None]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            reasons = tqdm(pool.map(_unreadable, [files[image] for image in present]), total=len(present),
                           unit="image", desc="checking images", disable=len(present) <= BAR_ABOVE)
            for image, reason in zip(present, reasons):
                if reason is not None:
                    broken[image] = f"cannot read image {image!r}: {reason}"
    captions = {}
    for line, image, caption in kept:
        if image in broken:
            problems.append((line, broken[image]))
        else:
            captions.setdefault(image, []).append(caption)

    if problems:
        problems.sort()
        listed = "\n".join(f"  line {line}: {message}" for line, message in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        warnings.warn(f"{csv_path!r}: skipped {len(problems)} row(s):\n{listed}{more}", UserWarning, stacklevel=2)
    if not captions:
        known = "the split column" if has_split_column else f"val_fraction={val_fraction} (no split column, no test)"
        raise ValueError(f"{os.path.basename(csv_path)} has no images in the {wanted} split ({csv_path!r}; "
                         f"splits from {known})")
    name = os.path.basename(os.path.abspath(path) if os.path.isdir(path) else folder)
    return CaptionSet([files[image] for image in captions], list(captions.values()), wanted, name, image_size)
