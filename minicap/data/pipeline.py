"""Batches for ``model.fit``: ``((images, input_tokens), target_tokens)`` (chapter 5).

Teacher forcing trains the decoder to predict token ``t + 1`` from tokens ``0..t`` and the image.
Each caption is encoded once to ``max_length + 1`` tokens, ``[START] w1 .. wn [END] [PAD] ..``;
the input is that sequence without its last token and the target is it without its first, so
position ``t`` of the target is the token that follows position ``t`` of the input. ``[PAD]`` (0)
in the target marks positions the loss ignores.

Built on ``keras.utils.PyDataset`` and numpy, so the same batches feed TensorFlow, JAX and PyTorch.
"""
import math
import os

import keras
import numpy as np

from minicap.data.images import ImageFiles, size_pair, load_image

__all__ = ["CaptionBatches"]

REFERENCES = ("all", "random")


class CaptionBatches(keras.utils.PyDataset):
    """Shuffled batches of ``((images, input_tokens), target_tokens)`` for captioning.

    Args:
        images: a uint8 array ``(num_images, height, width, 3)`` (scaled to float32 in [0, 1]),
            a float array already in [0, 1], a list of image file paths (then ``image_size``
            is required) or an :class:`~minicap.data.images.ImageFiles`; files are read from
            disk one batch at a time.
        captions: one list of reference captions (str) per image.
        tokenizer: a :class:`minicap.text.Tokenizer`.
        max_length: length of ``input_tokens`` and ``target_tokens``.
        batch_size: pairs per batch; the last batch of an epoch may be smaller.
        shuffle: reshuffle the pairs every epoch (deterministically from ``seed`` and the epoch).
        seed: the shuffling seed.
        references: ``"all"``: one (image, caption) pair per reference caption, so an epoch
            shows every phrasing once and each image once per reference; best for small data
            sets like shapes, where every phrasing should be learned. ``"random"``: one pair per
            image per epoch with a reference drawn anew each epoch, so an epoch is one pass over
            the images; best for Flickr8k/COCO, whose 5 references per image would otherwise
            repeat each image 5 times per epoch and overfit the image side sooner.
        image_size: an int or ``(height, width)``; required when ``images`` are paths.
        features: optional precomputed encoder features ``(num_images, ...)`` (see
            :func:`minicap.data.features.cached_features`); when given, batches carry them in
            place of the images.
        word_dropout: probability in [0, 1) of replacing each word of the *input* tokens by
            ``[UNK]`` (training only; the targets keep every word). The decoder then cannot
            always lean on the previous words and must read the image, which weakens its
            language prior (e.g. "yellow is never followed by circle"). Which words drop is
            fixed by ``(seed, epoch, batch index)``, so an epoch is reproducible.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.

    Batches:
        ``((images (B, H, W, 3) float32, input_tokens (B, max_length) int32),
        target_tokens (B, max_length) int32)``.

    Example:
        >>> from minicap.data.shapes import make_shapes
        >>> from minicap.text import Tokenizer
        >>> scenes = make_shapes(8, seed=0, image_size=32)
        >>> tokenizer = Tokenizer.fit([c for refs in scenes.captions for c in refs])
        >>> batches = CaptionBatches(scenes.images, scenes.captions, tokenizer,
        ...                          max_length=22, batch_size=16)
        >>> (images, inputs), targets = batches[0]  # 8 scenes x 4 captions: 32 pairs
        >>> len(batches), images.shape, inputs.shape, targets.shape
        (2, (16, 32, 32, 3), (16, 22), (16, 22))
    """

    def __init__(self, images, captions, tokenizer, max_length, batch_size=64, shuffle=True, seed=0,
                 references="all", image_size=None, features=None, word_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.paths = None
        if isinstance(images, ImageFiles):
            images, image_size = images.paths, image_size or images.image_size
        if isinstance(images, (list, tuple)) and (not images or isinstance(images[0], (str, os.PathLike))):
            if image_size is None and features is None:
                raise ValueError("images are file paths: pass image_size (an int or (height, width)) to resize them to")
            self.paths = [os.fspath(p) for p in images]
            num_images = len(self.paths)
        else:
            images = np.asarray(images)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images must be (num_images, height, width, 3), got shape {images.shape}")
            num_images = len(images)
        self.images, self.image_size = images, size_pair(image_size)
        if isinstance(captions, (str, np.ndarray)) or len(captions) != num_images:
            count = "a str" if isinstance(captions, str) else f"{len(captions)} caption lists"
            raise ValueError(f"captions must hold one list of captions per image: {num_images} images, got {count}")
        if features is not None and len(features) != num_images:
            raise ValueError(f"features has {len(features)} rows for {num_images} images")
        if references not in REFERENCES:
            raise ValueError(f"references must be one of {REFERENCES}, got {references!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        for index, refs in enumerate(captions):
            if isinstance(refs, str) or not len(refs):
                raise ValueError(
                    f"captions[{index}] must be a non-empty list of str, got {refs!r}; wrap one caption as [caption]"
                )
        if not isinstance(word_dropout, (int, float, np.floating)) or not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be a probability in [0, 1), got {word_dropout!r}")
        self.features = features
        self.word_dropout, self.unk_id = float(word_dropout), tokenizer.unk_id
        # Special tokens ([PAD], [START], [END], [UNK]) are never dropped: only real words are.
        self._special_ids = np.array([tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id, tokenizer.unk_id])
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.shuffle, self.seed, self.references = shuffle, seed, references
        self.epoch = 0
        flat = [c for refs in captions for c in refs]
        # One row per reference: image index and encoded caption ([START] .. [END] [PAD] ..).
        self.image_index = np.repeat(np.arange(num_images), [len(refs) for refs in captions])
        self.tokens = tokenizer.encode(flat, self.max_length + 1)  # (num_pairs, max_length + 1)
        self.first_reference = np.concatenate([[0], np.cumsum([len(r) for r in captions])[:-1]]).astype(int)
        self.num_references = np.array([len(r) for r in captions])
        self._order = self._epoch_order()

    @property
    def num_pairs(self):
        """(image, caption) pairs in one epoch."""
        return len(self.tokens) if self.references == "all" else len(self.num_references)

    def __len__(self):
        return math.ceil(self.num_pairs / self.batch_size)

    def _epoch_order(self):
        """Rows of ``self.tokens`` in this epoch's order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.references == "all":
            rows = np.arange(len(self.tokens))
        else:
            rows = self.first_reference + rng.integers(0, self.num_references)
        return rng.permutation(rows) if self.shuffle else rows

    def set_epoch(self, epoch):
        """Put the batches in ``epoch``'s order (the order depends only on the seed and the epoch,
        so a resumed run sees the batches an uninterrupted one would)."""
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        image_rows = self.image_index[rows]
        tokens = self.tokens[rows]
        return (self._pixels(image_rows), self._drop_words(tokens[:, :-1], index)), tokens[:, 1:]

    def _drop_words(self, inputs, index):
        """``inputs`` with each word replaced by ``[UNK]`` with probability ``word_dropout``."""
        if not self.word_dropout:
            return inputs
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        drop = (rng.random(inputs.shape) < self.word_dropout) & ~np.isin(inputs, self._special_ids)
        return np.where(drop, self.unk_id, inputs).astype(inputs.dtype)  # (B, max_length)

    def _pixels(self, image_rows):
        """The images (or features) of one batch, float32."""
        if self.features is not None:
            return np.asarray(self.features[image_rows], np.float32)
        if self.paths is not None:
            batch = np.stack([load_image(self.paths[i], self.image_size) for i in image_rows])
        else:
            batch = self.images[image_rows]
        if batch.dtype == np.uint8:
            return batch.astype(np.float32) / 255.0
        return batch.astype(np.float32)

