"""The real data sets as a training run asks for them: ``load(config)`` -> ``(train, val)``.

``minicap.trainer`` calls :func:`load` when ``config.dataset`` is not ``"shapes"``. Each split is
a :class:`~minicap.data.records.CaptionSet` whose ``images`` are read from disk one batch at a
time, resized to ``config.image_size``.
"""
import os

from minicap.data.coco import load_coco
from minicap.data.flickr8k import load_flickr8k

DATASETS = ("flickr8k", "coco")


def load(config):
    """``(train, val)`` of ``config.dataset``: Flickr8k's train/dev lists, or COCO's Karpathy
    train (with restval) / val; downloaded to ``config.data_dir`` (or the default cache) on demand."""
    data_dir = getattr(config, "data_dir", "")
    cache_dir = os.path.join(data_dir, config.dataset) if data_dir else None
    if config.dataset == "flickr8k":
        def split(name):
            return load_flickr8k(name, cache_dir, image_size=config.image_size)
        return split("train"), split("dev")
    if config.dataset == "coco":
        def split(name):
            return load_coco(name, cache_dir, image_size=config.image_size)
        return split("train"), split("val")
    raise ValueError(f"unknown dataset {config.dataset!r}; choose 'shapes' or one of {DATASETS}")
