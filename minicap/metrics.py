"""Caption metrics: BLEU and CIDEr-D (chapter 6).

**BLEU** (Papineni et al., 2002) and **CIDEr-D** (Vedantam et al., 2015) compare generated captions
with human reference captions by their shared n-grams; both are computed here exactly as the COCO
caption evaluation code (``pycocoevalcap``, the ``Bleu`` and ``Cider`` scorers) computes them, so the
numbers can be compared with published ones. The tests check this against ``pycocoevalcap`` itself.

Tokenisation: the official code first runs the Stanford PTB tokenizer (Java), lower-cases, and drops
punctuation tokens. :func:`tokenize` uses the tokenizer's own ``standardize`` (lower case, every
punctuation character a space) and splits on whitespace. On minicap's captions, which are lower case
without punctuation, the two give the same words; on other text they differ around contractions and
hyphens ("dog's": PTB ``dog 's``, here ``dog s``; "black-and-white": PTB one word, here three).
"""
import math
from collections import Counter

import numpy as np

from minicap.text import standardize

__all__ = ["corpus_bleu", "cider_d", "tokenize", "ngram_counts"]

# The official BLEU scorer adds these to every numerator and denominator: an n-gram order that
# matches nothing then contributes (0 + 1e-15) / (guesses + 1e-9) instead of log(0).
BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9

def tokenize(text):
    """The words of ``text`` as the metrics count them: the tokenizer's ``standardize`` (lower case,
    punctuation turned into spaces), split on whitespace.

    >>> tokenize("A red circle, left of a blue square.")
    ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']
    """
    return standardize(text).split()


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

    Example:
        >>> references = [["a red circle left of a blue square",
        ...                 "a blue square right of a red circle"]]
        >>> scores = corpus_bleu(["a red circle left of a blue square"], references)
        >>> round(scores["bleu1"], 3), round(scores["bleu4"], 3)
        (1.0, 1.0)
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

    Example:
        >>> captions = ["a red circle", "a blue square"]
        >>> references = [["a red circle", "a small red circle"],
        ...               ["a blue square", "a large blue square"]]
        >>> 0.0 < cider_d(captions, references) <= 10.0
        True
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
