"""Evaluating a captioning model: its captions scored, and its attention checked (chapter 6).

:func:`evaluate_shapes` and :func:`evaluate_caption_set` caption a data set and score the captions with
BLEU and CIDEr-D (:mod:`minicap.metrics`); on the shapes scenes, whose contents are known, also with
faithfulness (is each caption true?) and grounding.

**Grounding** asks whether the decoder looked at the right place: when it wrote the word for an
object, did its cross-attention peak on a patch of that object? :func:`grounding_score` measures it
and the chance level a uniformly random patch would reach.
"""
import numpy as np
from keras import ops

from minicap.data.faithfulness import check_caption
from minicap.generate import Generator
from minicap.metrics import cider_d, corpus_bleu

__all__ = ["evaluate_shapes", "evaluate_caption_set", "cross_attention", "reference_grounding", "grounding_score",
           "object_patches", "patch_overlap"]

def patch_overlap(mask, patch_size):
    """Fraction of each patch's pixels that ``mask`` covers.

    Args:
        mask: boolean (or 0/1) array ``(height, width)``, both divisible by ``patch_size``.
        patch_size: side ``P`` of the square patches, in pixels.

    Returns:
        float array ``(height / P, width / P)``; entry ``[r, c]`` belongs to patch ``r * (width / P) + c``
        in the row-major order of :class:`minicap.patches.Patches`.

    Example:
        >>> mask = np.zeros((8, 8), bool)
        >>> mask[0:4, 0:2] = True  # half of patch 0 of a 2 x 2 grid
        >>> patch_overlap(mask, patch_size=4).tolist()
        [[0.5, 0.0], [0.0, 0.0]]
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    _check_patch_grid(mask.shape, patch_size, "mask")
    rows, cols = mask.shape[0] // patch_size, mask.shape[1] // patch_size
    blocks = mask.astype(np.float64).reshape(rows, patch_size, cols, patch_size)  # (R, P, C, P)
    return blocks.mean(axis=(1, 3))


def _check_patch_grid(size, patch_size, name):
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    for axis, pixels in zip(("height", "width"), size):
        if pixels % patch_size:
            raise ValueError(f"{name} {axis} {pixels} is not divisible by patch size {patch_size}")


def object_patches(mask, patch_size, min_overlap=0.25):
    """The patches that count as "on" an object, as a flat boolean array in row-major patch order.

    A patch is on the object when the object covers at least ``min_overlap`` of the patch's pixels,
    or when it is the patch holding most of the object (so that an object smaller than
    ``min_overlap`` of a patch still has one patch to be found on).

    Args:
        mask: the object's boolean mask ``(height, width)``, both divisible by ``patch_size``.

    Returns:
        Boolean array ``(height / patch_size * width / patch_size,)``, True on the object's patches.

    Example:
        >>> mask = np.zeros((8, 8), bool)
        >>> mask[0:3, 0:3] = True  # most of patch 0 of a 2 x 2 grid
        >>> object_patches(mask, patch_size=4).tolist()
        [True, False, False, False]
    """
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be a fraction in (0, 1], got {min_overlap!r}")
    overlap = patch_overlap(mask, patch_size).reshape(-1)
    if not overlap.any():
        raise ValueError("the object's mask is empty: it covers no pixel, so no patch can show it")
    on_object = overlap >= min_overlap
    on_object[np.argmax(overlap)] = True
    return on_object


def grounding_score(attention, mentions, masks, image_size, patch_size, min_overlap=0.25):
    """How often the cross-attention peaks on the object a word names, and how often chance would.

    For each mention, the peak patch is the argmax of that word's attention over the patches
    (row-major over the ``(H / P, W / P)`` grid). The mention is grounded when the peak patch is on
    the object by the rule of :func:`object_patches`: the object covers at least ``min_overlap``
    (default a quarter) of the patch, or the patch holds the largest share of the object.

    Args:
        attention: one array per caption, ``(words, patches)``: cross-attention weights of each
            generated word over the image patches, averaged over heads and layers by the caller.
        mentions: one list per caption of ``(word_index, object_index)`` pairs: the word at
            ``word_index`` (a row of that caption's attention) names object ``object_index``.
        masks: one boolean array per caption, ``(objects, height, width)``: each object's pixels.
        image_size: ``height`` = ``width`` as an int, or ``(height, width)``, in pixels.
        patch_size: side ``P`` of the square patches, in pixels.
        min_overlap: the fraction of a patch an object must cover for the patch to be on it.

    Returns:
        a dict: ``"grounding"``, the fraction of mentions grounded; ``"chance"``, the mean over mentions of the
        fraction of patches on the object (what a uniformly random peak would score); ``"mentions"``, the number
        of mentions. Both fractions are NaN when there are no mentions.

    Example:
        >>> masks = np.zeros((1, 1, 8, 8), bool)  # one caption, one object
        >>> masks[0, 0, 0:4, 0:4] = True  # the object is patch 0 of a 2 x 2 grid
        >>> attention = [np.array([[0.1, 0.7, 0.1, 0.1],  # word 0 over the 4 patches
        ...                        [0.7, 0.1, 0.1, 0.1]])]  # word 1
        >>> mentions = [[(1, 0)]]  # word 1 names object 0
        >>> grounding_score(attention, mentions, masks, image_size=8, patch_size=4)
        {'grounding': 1.0, 'chance': 0.25, 'mentions': 1}
    """
    size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    height, width = size
    _check_patch_grid((height, width), patch_size, "image")
    num_patches = (height // patch_size) * (width // patch_size)
    if not len(attention) == len(mentions) == len(masks):
        raise ValueError(f"attention, mentions and masks must have one entry per caption, got "
                         f"{len(attention)}, {len(mentions)} and {len(masks)}")
    grounded, chance, count = 0, 0.0, 0
    for caption, (weights, pairs, object_masks) in enumerate(zip(attention, mentions, masks)):
        weights, object_masks = np.asarray(weights), np.asarray(object_masks)
        if weights.ndim != 2 or weights.shape[1] != num_patches:
            raise ValueError(
                f"attention[{caption}] must be (words, {num_patches}) for a {height}x{width} image "
                f"in {patch_size}-pixel patches, got shape {weights.shape}")
        if object_masks.ndim != 3 or object_masks.shape[1:] != (height, width):
            raise ValueError(f"masks[{caption}] must be (objects, {height}, {width}), got shape "
                             f"{object_masks.shape}")
        for word_index, object_index in pairs:
            if not 0 <= word_index < weights.shape[0]:
                raise ValueError(f"mentions[{caption}] names word {word_index}, but attention"
                                 f"[{caption}] has {weights.shape[0]} words (rows)")
            if not 0 <= object_index < object_masks.shape[0]:
                raise ValueError(f"mentions[{caption}] names object {object_index}, but masks"
                                 f"[{caption}] has {object_masks.shape[0]} objects")
            if not object_masks[object_index].any():
                raise ValueError(f"masks[{caption}][{object_index}] is empty: object {object_index} "
                                 "covers no pixel, so no patch can show it")
            on_object = object_patches(object_masks[object_index], patch_size, min_overlap)
            grounded += bool(on_object[np.argmax(weights[word_index])])
            chance += float(on_object.mean())
            count += 1
    if not count:
        return {"grounding": float("nan"), "chance": float("nan"), "mentions": 0}
    return {"grounding": grounded / count, "chance": chance / count, "mentions": count}


def cross_attention(model, images, tokens, layer="mean"):
    """Cross-attention of a full pass, averaged over heads: ``(batch, positions, patches)`` numpy.

    Args:
        model: a ``CaptionModel``.
        images: float images ``(batch, H, W, 3)`` in [0, 1].
        tokens: decoder input tokens ``(batch, T)``; row ``t`` of the result is where the model
            looks while writing the word that follows ``tokens[:, t]``.
        layer: a decoder layer index (negative counts from the last), or ``"mean"`` over layers.

    Example:
        >>> from minicap.model import CaptionConfig, CaptionModel
        >>> config = CaptionConfig(vocab_size=30, max_length=6, image_size=32, patch_size=8,
        ...                        model_dim=32, num_heads=2, mlp_dim=64)
        >>> model = CaptionModel(config)
        >>> images, tokens = np.zeros((2, 32, 32, 3), "float32"), np.ones((2, 6), "int32")
        >>> weights = cross_attention(model, images, tokens)  # 6 positions over 16 patches
        >>> weights.shape, bool(np.allclose(weights.sum(axis=-1), 1.0))  # rows sum to 1
        ((2, 6, 16), True)
    """
    layers = model.attention_scores(images, tokens)["cross"]  # per layer (B, heads, T, N)
    layers = [np.asarray(ops.convert_to_numpy(weights), dtype="float32").mean(axis=1) for weights in layers]
    if layer == "mean":
        return np.mean(layers, axis=0)
    if not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer must be 'mean' or an index of the {len(layers)} decoder layers, got {layer!r}")
    return layers[layer]


def evaluate_shapes(model, tokenizer, data, method="greedy", batch_size=100, layer="mean", **options):
    """Caption a shapes split and score it: BLEU-1..4, CIDEr-D, faithfulness and grounding.

    Args:
        model: a ``CaptionModel``; tokenizer: its ``Tokenizer``.
        data: a ``ShapesData`` split (images, reference captions and scenes).
        method: ``"greedy"``, ``"beam"`` or ``"sample"``, with its ``options`` (see ``Generator.decode``).
        batch_size: images captioned at once.
        layer: which decoder layer's cross-attention grounding uses (``"mean"``: all).

    Returns:
        ``(metrics, captions)``: a dict of floats, and the generated captions (str).
    """
    if len(data) == 0:
        raise ValueError("the split is empty: there is nothing to evaluate")
    generator = Generator.from_tokenizer(model, tokenizer)
    captions, attention, mentions, masks, faithful = [], [], [], [], 0
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].astype("float32") / 255.0
        tokens = generator.decode(images, method, **options)
        weights = cross_attention(model, images, tokens[:, :-1], layer)  # (B, L, N)
        for row, text in enumerate(tokenizer.decode_batch(tokens)):
            scene = data.scenes[start + row]
            check = check_caption(text, scene)
            captions.append(text)
            faithful += check.faithful
            attention.append(weights[row, :max(len(text.split()), 1)])
            mentions.append(check.mentions)
            masks.append(scene.masks)
    metrics = corpus_bleu(captions, data.captions)
    metrics["cider_d"] = cider_d(captions, data.captions)
    metrics["faithfulness"] = faithful / len(data)
    patch_size = model.config.encoder_patch_size
    metrics.update(grounding_score(attention, mentions, masks, model.config.image_size, patch_size))
    return {key: float(value) for key, value in metrics.items()}, captions


def reference_grounding(model, tokenizer, data, batch_size=100, layer="mean"):
    """Grounding while the model *reads* each image's first reference caption (teacher forcing).

    Unlike the grounding of generated captions, this scores every model on the same words, so an
    untrained model, whose own captions name no object, gets a score too.

    Args:
        data: a :class:`minicap.data.shapes.ShapesData` (images ``(N, size, size, 3)`` uint8, and the scenes
            whose masks say where each object is).
        layer: the decoder layer whose cross-attention ``(batch, words, patches)`` is read, or ``"mean"``.

    Returns:
        A dict of floats, as :func:`grounding_score` returns it.
    """
    attention, mentions, masks = [], [], []
    length = model.config.max_length
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].astype("float32") / 255.0
        texts = [references[0] for references in data.captions[start:start + batch_size]]
        tokens = tokenizer.encode(texts, length)
        weights = cross_attention(model, images, tokens, layer)  # (B, T, N)
        for row, text in enumerate(texts):
            scene = data.scenes[start + row]
            words = text.split()[: length - 1]
            attention.append(weights[row, :len(words)])
            mentions.append([(w, o) for w, o in check_caption(text, scene).mentions if w < len(words)])
            masks.append(scene.masks)
    score = grounding_score(attention, mentions, masks, model.config.image_size, model.config.encoder_patch_size)
    return {key: float(value) for key, value in score.items()}


def evaluate_caption_set(model, tokenizer, caption_set, method="greedy", batch_size=64, **options):
    """BLEU-1..4 and CIDEr-D of a real data set split (Flickr8k, COCO), read from disk in batches.

    Args:
        caption_set: a :class:`minicap.data.records.CaptionSet` loaded with ``image_size`` equal
            to the model's.

    Returns:
        ``(metrics, captions)``.
    """
    if len(caption_set) == 0:
        raise ValueError(f"the {caption_set.name} {caption_set.split} split is empty: there is nothing to evaluate")
    generator = Generator.from_tokenizer(model, tokenizer)
    files, captions = caption_set.images, []
    for start in range(0, len(caption_set), batch_size):
        images = np.stack([files[i] for i in range(start, min(start + batch_size, len(caption_set)))])
        captions += tokenizer.decode_batch(generator.decode(images.astype("float32") / 255.0, method, **options))
    metrics = corpus_bleu(captions, caption_set.captions)
    metrics["cider_d"] = cider_d(captions, caption_set.captions)
    return {key: float(value) for key, value in metrics.items()}, captions
