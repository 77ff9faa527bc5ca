"""The real data sets as a training run asks for them: ``load_split(config, "train")``.

``minicap.trainer.load_split`` calls :func:`load_split` when ``config.dataset`` is ``"flickr8k"`` or
``"coco"`` (and ``minicap evaluate`` for their test splits). Each split is a :class:`~minicap.data.records.CaptionSet` whose ``images`` are read from disk one batch at a
time, resized to the model's image size.

Where the archives come from: the official hosts by default. ``config.data_url`` points at a mirror
(``https://...`` or ``file:///...``, a folder holding the archives under their official names), and
archives already on disk are used as they are when they sit in ``<data_dir>/<dataset>/downloads/``.
Either way each archive is checked against its published digest; ``config.data_hashes`` replaces
those digests only when the user gives others explicitly (e.g. a re-packed mirror).
"""
import os

from minicap.data.coco import load_coco
from minicap.data.flickr8k import ARCHIVES, load_flickr8k

DATASETS = ("flickr8k", "coco")
COCO_ARCHIVES = {"annotations": "annotations_trainval2014.zip", "karpathy": "caption_datasets.zip",
                 "train2014": "train2014.zip", "val2014": "val2014.zip"}


def _mirror(base, names):
    """The URL of each archive at a mirror folder ``base`` (``{}`` without a mirror)."""
    if not base:
        return {}
    base = base if base.endswith("/") else base + "/"
    return {key: base + name for key, name in names.items()}


def load_split(config, split, image_size=None):
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
