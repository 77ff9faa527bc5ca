"""Evaluating captions: BLEU, CIDEr-D and attention grounding (chapter 6).

**BLEU** (Papineni et al., 2002) and **CIDEr-D** (Vedantam et al., 2015) compare generated captions
with human reference captions by their shared n-grams; both are computed here exactly as the COCO
caption evaluation code (``pycocoevalcap``, the ``Bleu`` and ``Cider`` scorers) computes them, so the
numbers can be compared with published ones. The tests check this against ``pycocoevalcap`` itself.

Tokenisation: the official code first runs the Stanford PTB tokenizer (Java), lower-cases, and drops
punctuation tokens. :func:`tokenize` lower-cases, turns every punctuation character into a space and
splits on whitespace. On minicap's captions, which are lower case without punctuation, the two give
the same words; on other text they differ around contractions and hyphens ("dog's": PTB
``dog 's``, here ``dog s``; "black-and-white": PTB one word, here three).

**Grounding** asks whether the decoder looked at the right place: when it wrote the word for an
object, did its cross-attention peak on a patch of that object? :func:`grounding_score` measures it
and the chance level a uniformly random patch would reach.
"""
import math
import re
from collections import Counter

import numpy as np
from keras import ops

# The official BLEU scorer adds these to every numerator and denominator: an n-gram order that
# matches nothing then contributes (0 + 1e-15) / (guesses + 1e-9) instead of log(0).
BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def tokenize(text):
    """Lower-case ``text``, replace punctuation with spaces and split it into words.

    >>> tokenize("A red circle, left of a blue square.")
    ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a caption string, got {type(text).__name__} {text!r}")
    return _PUNCTUATION.sub(" ", text.lower()).split()


def ngram_counts(words, max_order=4):
    """Counts of every n-gram of ``words`` (a list of strings) for n = 1 .. ``max_order``, keyed by
    tuples of words."""
    counts = Counter()
    for order in range(1, max_order + 1):
        for start in range(len(words) - order + 1):
            counts[tuple(words[start:start + order])] += 1
    return counts


def _check_max_order(max_order):
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive integer (4 for BLEU-4), got {max_order!r}")


def _tokenized_corpus(candidates, references):
    """Validate a corpus (one candidate and a non-empty list of references per image) and tokenise it."""
    if isinstance(candidates, str) or isinstance(references, str):
        raise ValueError("candidates must be a list of caption strings and references a list of lists "
                         "of caption strings (one list per candidate), got a single string")
    candidates, references = list(candidates), list(references)
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists; "
                         "give exactly one list of reference captions per candidate")
    if not candidates:
        raise ValueError("the corpus is empty: give at least one candidate and its references")
    tokenized_references = []
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{index}] must be a non-empty list of caption strings, got "
                             f"{refs!r}; wrap a single reference in a list: [caption]")
        tokenized_references.append([tokenize(ref) for ref in refs])
    return [tokenize(candidate) for candidate in candidates], tokenized_references


def corpus_bleu(candidates, references, max_order=4):
    """Corpus BLEU-1 .. BLEU-``max_order`` of ``candidates`` against ``references``, as COCO computes it.

    Clipped n-gram matches and candidate n-gram counts are summed over the whole corpus before
    dividing (a corpus score, not a mean of sentence scores). The brevity penalty compares the total
    candidate length ``c`` with the total *closest* reference length ``r`` (per candidate, the
    reference length nearest to its length, the shorter one on a tie): ``exp(1 - r / c)`` when
    ``c < r``, else 1. BLEU-n is the geometric mean of the precisions of orders 1 .. n times that
    penalty, with the smoothing constants of the official code (``BLEU_TINY``, ``BLEU_SMALL``).

    Args:
        candidates: list of generated captions (strings), one per image.
        references: list of lists of reference captions, one non-empty list per candidate.
        max_order: the longest n-gram order.

    Returns:
        ``{"bleu1": ..., ..., f"bleu{max_order}": ...}``, floats in [0, 1].
    """
    _check_max_order(max_order)
    candidates, references = _tokenized_corpus(candidates, references)
    matches, guesses = [0] * max_order, [0] * max_order
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references):
        counts = ngram_counts(candidate, max_order)
        max_reference_counts = Counter()
        for ref in refs:
            max_reference_counts |= ngram_counts(ref, max_order)  # | keeps the larger count
        for ngram, count in counts.items():
            matches[len(ngram) - 1] += min(count, max_reference_counts[ngram])
        for order in range(1, max_order + 1):
            guesses[order - 1] += max(0, len(candidate) - order + 1)
        candidate_length += len(candidate)
        reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]

    ratio = (candidate_length + BLEU_TINY) / (reference_length + BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = {}, 1.0
    for order in range(1, max_order + 1):
        product *= (matches[order - 1] + BLEU_TINY) / (guesses[order - 1] + BLEU_SMALL)
        scores[f"bleu{order}"] = product ** (1 / order) * brevity_penalty
    return scores


def _tfidf(counts, log_num_images, document_frequency, max_order):
    """TF-IDF vectors of one caption's n-gram counts (one dict per n-gram order) and their norms."""
    vectors = [{} for _ in range(max_order)]
    norms = [0.0] * max_order
    for ngram, count in counts.items():
        # An n-gram no reference contains gets document frequency 1, as in the official code.
        weight = count * (log_num_images - math.log(max(1.0, document_frequency[ngram])))
        vectors[len(ngram) - 1][ngram] = weight
        norms[len(ngram) - 1] += weight**2
    return vectors, [math.sqrt(norm) for norm in norms]


def cider_d(candidates, references, sigma=6.0):
    """Corpus CIDEr-D of ``candidates`` against ``references``, on COCO's ×10 scale.

    Each caption becomes, per n-gram order n = 1..4, a vector of TF-IDF weights: term frequency
    times ``log(images / images whose references contain the n-gram)``, the document frequencies
    taken from the references of the evaluated corpus. The candidate's score against one reference is,
    averaged over n, the cosine similarity of their vectors with the candidate's weights *clipped*
    to the reference's (repeating a word earns nothing) and multiplied by the Gaussian length penalty
    ``exp(-(l_candidate - l_reference)² / (2 σ²))``. An image's score is 10 × its mean over its
    references; the corpus score is the mean over images. (The official code measures lengths in
    bigrams, words - 1; the difference is the same unless a caption is empty, and an empty caption
    scores 0 either way.)

    Because n-grams found in every image's references weigh nothing, a corpus of a single image
    scores 0: CIDEr-D needs a corpus.

    Args:
        candidates: list of generated captions (strings), one per image.
        references: list of lists of reference captions, one non-empty list per candidate.
        sigma: the standard deviation σ of the length penalty, in words.

    Returns:
        the corpus CIDEr-D, a float in [0, 10]. A candidate of four or more words equal to each of
        its references scores 10, unless all its n-grams of some order occur in every image.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be a positive number of words (COCO uses 6.0), got {sigma!r}")
    candidates, references = _tokenized_corpus(candidates, references)
    max_order = 4
    reference_counts = [[ngram_counts(ref, max_order) for ref in refs] for refs in references]
    document_frequency = Counter()
    for counts_of_image in reference_counts:
        document_frequency.update(set().union(*counts_of_image))
    log_num_images = math.log(len(candidates))

    image_scores = []
    for candidate, refs, counts_of_image in zip(candidates, references, reference_counts):
        vectors, norms = _tfidf(
            ngram_counts(candidate, max_order), log_num_images, document_frequency, max_order)
        total = np.zeros(max_order)
        for ref, counts in zip(refs, counts_of_image):
            ref_vectors, ref_norms = _tfidf(counts, log_num_images, document_frequency, max_order)
            penalty = math.exp(-float(len(candidate) - len(ref)) ** 2 / (2 * sigma**2))
            for order in range(max_order):
                ref_vector = ref_vectors[order]
                similarity = sum(min(weight, ref_vector.get(ngram, 0.0)) * ref_vector.get(ngram, 0.0)
                                 for ngram, weight in vectors[order].items())
                if norms[order] and ref_norms[order]:
                    similarity /= norms[order] * ref_norms[order]
                total[order] += similarity * penalty
        image_scores.append(10.0 * total.mean() / len(counts_of_image))
    return float(np.mean(image_scores))


def patch_overlap(mask, patch_size):
    """Fraction of each patch's pixels that ``mask`` covers.

    Args:
        mask: boolean (or 0/1) array ``(height, width)``, both divisible by ``patch_size``.
        patch_size: side ``P`` of the square patches, in pixels.

    Returns:
        float array ``(height / P, width / P)``; entry ``[r, c]`` belongs to patch ``r * (width / P) + c``
        in the row-major order of :class:`minicap.patches.Patches`.
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
        ``{"grounding": fraction of mentions grounded, "chance": mean over mentions of the
        fraction of patches on the object (what a uniformly random peak would score),
        "mentions": number of mentions}``; both fractions are NaN when there are no mentions.
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
            chance += on_object.mean()
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
        method: ``"greedy"``, ``"beam"`` or ``"sample"`` (``options`` go to the decoder).
        batch_size: images captioned at once.
        layer: which decoder layer's cross-attention grounding uses (``"mean"``: all).

    Returns:
        ``(metrics, captions)``: a dict of floats, and the generated captions (str).
    """
    from minicap.data.faithfulness import check_caption
    from minicap.generate import Generator

    if len(data) == 0:
        raise ValueError("the split is empty: there is nothing to evaluate")
    generator = Generator(model, tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id)
    decode = {"greedy": generator.greedy, "beam": generator.beam_search, "sample": generator.sample}[method]
    captions, attention, mentions, masks, faithful = [], [], [], [], 0
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].astype("float32") / 255.0
        tokens = decode(images, **options)
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
    """
    from minicap.data.faithfulness import check_caption

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
    from minicap.generate import Generator

    if len(caption_set) == 0:
        raise ValueError(f"the {caption_set.name} {caption_set.split} split is empty: there is nothing to evaluate")
    generator = Generator(model, tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id)
    decode = {"greedy": generator.greedy, "beam": generator.beam_search, "sample": generator.sample}[method]
    files, captions = caption_set.images, []
    for start in range(0, len(caption_set), batch_size):
        images = np.stack([files[i] for i in range(start, min(start + batch_size, len(caption_set)))])
        captions += tokenizer.decode_batch(decode(images.astype("float32") / 255.0, **options))
    metrics = corpus_bleu(captions, caption_set.captions)
    metrics["cider_d"] = cider_d(captions, caption_set.captions)
    return {key: float(value) for key, value in metrics.items()}, captions
