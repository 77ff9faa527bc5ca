"""The data of a training run: ``load_data(config)`` and ``load_split(config, split)`` (chapter 5).

``config.dataset`` names the data set: ``"shapes"`` (built in, drawn on the spot), ``"flickr8k"`` or
``"coco"`` (downloaded on demand), or the path of a folder (or CSV file) of your own captioned images. Each
split of a real data set is a :class:`~minicap.data.records.CaptionSet` whose ``images`` are read from disk
one batch at a time, resized to the model's image size.

Where the archives come from: the official hosts by default. ``config.data_url`` points at a mirror
(``https://...`` or ``file:///...``, a folder holding the archives under their official names), and
archives already on disk are used as they are when they sit in ``<data_dir>/<dataset>/downloads/``.
Either way each archive is checked against its published digest; ``config.data_hashes`` replaces
those digests only when the user gives others explicitly (e.g. a re-packed mirror).
"""
import os

from minicap.config import DATASETS, DOWNLOADED_DATASETS
from minicap.data.coco import load_coco
from minicap.data.flickr8k import ARCHIVES, load_flickr8k
from minicap.data.folder import load_caption_folder
from minicap.data.shapes import make_shapes

__all__ = ["load_data", "load_split", "scoring_split", "resolve_dataset", "load_real_split"]

COCO_ARCHIVES = {"annotations": "annotations_trainval2014.zip", "karpathy": "caption_datasets.zip",
                 "train2014": "train2014.zip", "val2014": "val2014.zip"}


def _mirror(base, names):
    """The URL of each archive at a mirror folder ``base`` (``{}`` without a mirror)."""
    if not base:
        return {}
    base = base if base.endswith("/") else base + "/"
    return {key: base + name for key, name in names.items()}


def load_real_split(config, split, image_size=None):
    """One split (``"train"``, ``"val"`` or ``"test"``) of ``config.dataset``: Flickr8k's official lists
    (``val`` is its dev list) or COCO's Karpathy split (train with restval), downloaded to
    ``config.data_dir`` (or the default cache) on demand and unpacked into ``config.extract_dir`` (default:
    beside the archives), with ``config``'s data settings (``data_url``, ``data_hashes``), its images
    resized to ``image_size`` (default: the model's)."""
    data_dir = config.data_dir
    cache_dir = os.path.join(data_dir, config.dataset) if data_dir else None
    extract_dir = os.path.join(config.extract_dir, config.dataset) if config.extract_dir else None
    image_size = image_size or config.model.image_size
    base, hashes = config.data_url, dict(config.data_hashes or {})
    known = {"flickr8k": ARCHIVES, "coco": COCO_ARCHIVES}.get(config.dataset)
    if known is None:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {list(DATASETS)}, or a folder path")
    unknown = sorted(set(hashes) - set(known))
    if unknown:
        raise ValueError(f"data_hashes for {config.dataset} name unknown archives {unknown}; known: {sorted(known)}")
    if config.dataset == "flickr8k":
        options = dict(hashes=hashes, image_size=image_size, extract_dir=extract_dir)
        if base:
            options["base_url"] = base if base.endswith("/") else base + "/"
        return load_flickr8k(split, cache_dir, **options)
    return load_coco(split, cache_dir, urls=_mirror(base, COCO_ARCHIVES), hashes=hashes, image_size=image_size,
                     extract_dir=extract_dir)


def resolve_dataset(value):
    """The ``dataset`` setting for ``value``: a built-in data set's name as it is, else the absolute path of an
    existing folder (or CSV file) of captioned images; anything else is a ValueError naming it."""
    if value in DATASETS:
        return value
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    if not os.path.exists(path):
        raise ValueError(f"dataset {value!r} is neither shapes, flickr8k, coco nor an existing folder or CSV file "
                         f"of captioned images")
    return path


def scoring_split(config, split=None, image_size=None):
    """``(split, data)``: the photos a model trained on ``config``'s data set is scored on, ``split`` if given,
    else the held-out one: Flickr8k's and COCO's test split, a folder's val split (see
    :func:`~minicap.data.folder.load_caption_folder`). ``image_size``: default the model's."""
    image_size = image_size or config.model.image_size
    if config.dataset == "shapes":
        raise ValueError("shapes scenes are scored on new scenes drawn for the purpose (minicap.data.shapes."
                         "make_shapes), not on a split of files")
    if config.dataset in DOWNLOADED_DATASETS:
        split = split or "test"
        return split, load_real_split(config, split, image_size)
    split = split or "val"
    return split, load_caption_folder(config.dataset, split, image_size=image_size)


def load_data(config):
    """The training and validation data of ``config``: ``(train, val)`` (see :func:`load_split`)."""
    return load_split(config, "train"), load_split(config, "val")


def load_split(config, split):
    """One split (``"train"`` or ``"val"``; ``"test"`` for the real data sets) of ``config``'s data set.

    Shapes scenes (``ShapesData``, images in memory) or, for photos, a ``CaptionSet`` of image files
    read from disk a batch at a time: Flickr8k's train/dev lists, COCO's Karpathy train (with restval)
    / val, or a folder's train/val split.
    """
    image_size = config.model.image_size
    if config.dataset == "shapes":
        if split not in ("train", "val"):
            raise ValueError(f"shapes runs have a train and a val split, not {split!r}")
        count, seed = (config.num_train, config.seed) if split == "train" else (config.num_val, config.seed + 1)
        return make_shapes(count, split=split, seed=seed, image_size=image_size, max_objects=config.max_objects)
    if config.dataset in DOWNLOADED_DATASETS:
        return load_real_split(config, split)
    return load_caption_folder(config.dataset, split, image_size=image_size)
