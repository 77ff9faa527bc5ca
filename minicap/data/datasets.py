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

from minicap.data.coco import load_coco
from minicap.data.flickr8k import ARCHIVES, load_flickr8k
from minicap.data.folder import load_caption_folder
from minicap.data.shapes import make_shapes

DATASETS = ("flickr8k", "coco")
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
    ``config.data_dir`` (or the default cache) on demand, with ``config``'s data
    settings (``data_dir``, ``data_url``, ``data_hashes``), its images resized to ``image_size``
    (default: the model's)."""
    data_dir = config.data_dir
    cache_dir = os.path.join(data_dir, config.dataset) if data_dir else None
    image_size = image_size or config.model.image_size
    base, hashes = config.data_url, dict(config.data_hashes or {})
    known = {"flickr8k": ARCHIVES, "coco": COCO_ARCHIVES}.get(config.dataset)
    if known is None:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose 'shapes', one of {DATASETS}, or a folder path")
    unknown = sorted(set(hashes) - set(known))
    if unknown:
        raise ValueError(f"data_hashes for {config.dataset} name unknown archives {unknown}; known: {sorted(known)}")
    if config.dataset == "flickr8k":
        options = dict(hashes=hashes, image_size=image_size)
        if base:
            options["base_url"] = base if base.endswith("/") else base + "/"
        return load_flickr8k(split, cache_dir, **options)
    return load_coco(split, cache_dir, urls=_mirror(base, COCO_ARCHIVES), hashes=hashes, image_size=image_size)


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
    if config.dataset in DATASETS:
        return load_real_split(config, split)
    return load_caption_folder(config.dataset, split, image_size=image_size)
