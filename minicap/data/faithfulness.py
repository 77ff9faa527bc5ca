"""Is a caption true of its shapes scene? An exact parser for the scenes' grammar (chapters 5-6).

BLEU and CIDEr reward captions that share words with the references; a caption can share most of
them and still be false ("a large red circle" for a small one). Shapes scenes know their ground
truth, so a caption can be *checked*: parse it with the grammar of :mod:`minicap.data.shapes`,
find the object each noun phrase names, and test every stated attribute and relation.
"""
import dataclasses

from minicap.data.shapes import COLOURS, RELATIONS, SHAPES, SIZES, describe, true_relations
from minicap.text import standardize

__all__ = ["check_caption", "CaptionCheck", "faithfulness_rate", "parse_caption"]


@dataclasses.dataclass
class CaptionCheck:
    """The verdict on one caption.

    Attributes:
        faithful: every stated object (shape, colour, size) and relation is true of the scene,
            and the caption parses and names at least one object.
        errors: what is wrong, in words.
        error_kinds: the kind of each error, in the same order: one of ``ERROR_KINDS``.
        mentions: ``(word_index, object_index)`` for each object phrase that names an object of
            the scene: the index of its shape noun in ``caption.split()`` and the object's index.
        complete: every object of the scene is mentioned (a faithful caption may leave some out).
    """

    faithful: bool
    errors: list
    mentions: list
    complete: bool
    error_kinds: list = dataclasses.field(default_factory=list)


# What can be wrong with a caption: it does not parse; it names an object the scene lacks; it gives an
# object the wrong size; it names several objects at once; it states a false relation.
ERROR_KINDS = ("unparsable", "wrong object", "wrong size", "ambiguous", "wrong relation")


def _parse_object(words, i):
    """Parse ``"a" [size] colour shape`` at ``words[i]``; return (size, colour, shape, shape_index, next)."""
    def expected(what):
        found = repr(words[i]) if i < len(words) else "the end of the caption"
        return ValueError(f"word {i}: expected {what}, found {found}")

    if i >= len(words) or words[i] != "a":
        raise expected("'a'")
    i += 1
    size = None
    if i < len(words) and words[i] in SIZES:
        size, i = words[i], i + 1
    if i >= len(words) or words[i] not in COLOURS:
        raise expected(f"a colour ({', '.join(COLOURS)})")
    colour, i = words[i], i + 1
    if i >= len(words) or words[i] not in SHAPES:
        raise expected(f"a shape ({', '.join(SHAPES)})")
    return size, colour, words[i], i, i + 1


def _parse_relation(words, i):
    """Parse a relation at ``words[i]``; return (relation, next) or (None, i)."""
    for relation in RELATIONS:
        parts = relation.split()
        if words[i : i + len(parts)] == parts:
            return relation, i + len(parts)
    return None, i


def parse_caption(caption):
    """Parse a caption into ``[(object, relation, object), ...]`` clauses (relation and second
    object None for a bare object); each object is ``(size, colour, shape, shape_word_index)``.

    Raises:
        ValueError: the caption does not follow the grammar; the message names the word.
    """
    words = standardize(caption).split()
    i = 2 if words[:2] == ["there", "is"] else 0
    clauses = []
    while True:
        *first, i = _parse_object(words, i)
        relation, i = _parse_relation(words, i)
        second = None
        if relation is not None:
            *second, i = _parse_object(words, i)
        clauses.append((tuple(first), relation, tuple(second) if second else None))
        if i < len(words) and words[i] == "and":
            i += 1
            continue
        if words[i:] == ["in", "the", "picture"]:
            i = len(words)
        if i != len(words):
            raise ValueError(f"word {i}: expected 'and', a relation or the end, found {words[i]!r}")
        return clauses


def _resolve(phrase, scene, errors):
    """Index of the object ``phrase`` names, or None (with ``(kind, reason)`` appended to ``errors``)."""
    size, colour, shape, _ = phrase
    named = f"a {size + ' ' if size else ''}{colour} {shape}"
    matches = [k for k, o in enumerate(scene.objects) if o.colour == colour and o.shape == shape]
    if size is not None:
        same_size = [k for k in matches if scene.objects[k].size == size]
        if matches and not same_size:
            errors.append(("wrong size", f"{named}: the {colour} {shape} is {scene.objects[matches[0]].size}, not {size}"))
            return None
        matches = same_size
    if not matches:
        errors.append(("wrong object", f"{named}: there is no {colour} {shape} in the scene"))
        return None
    if len(matches) > 1:
        errors.append(("ambiguous", f"{named}: ambiguous, {len(matches)} objects match"))
        return None
    return matches[0]


def check_caption(caption, scene):
    """Check every object, attribute and relation ``caption`` states against ``scene``.

    >>> from minicap.data.shapes import make_shapes
    >>> data = make_shapes(1, seed=0)
    >>> check_caption(data.captions[0][0], data.scenes[0]).faithful  # a reference: true
    True
    >>> check_caption("a huge purple circle", data.scenes[0]).faithful
    False
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}: {caption!r}")
    try:
        clauses = parse_caption(caption)
    except ValueError as error:
        return CaptionCheck(False, [f"cannot parse {caption!r}: {error}"], [], False, ["unparsable"])
    errors, mentions = [], []
    for first, relation, second in clauses:
        a = _resolve(first, scene, errors)
        b = _resolve(second, scene, errors) if second else None
        for phrase, index in ((first, a), (second, b)):
            if phrase is not None and index is not None:
                mentions.append((phrase[3], index))
        if relation is None or a is None or b is None:
            continue
        if a == b:
            errors.append(("wrong relation", f"{describe(scene.objects[a])} cannot be {relation} itself"))
        elif relation not in true_relations(scene.objects[a], scene.objects[b], scene.image_size):
            errors.append(
                ("wrong relation", f"{describe(scene.objects[a])} is not {relation} {describe(scene.objects[b])}")
            )
    complete = {k for _, k in mentions} == set(range(len(scene.objects)))
    kinds, messages = [kind for kind, _ in errors], [message for _, message in errors]
    return CaptionCheck(not errors and bool(mentions), messages, mentions, complete, kinds)


def faithfulness_rate(captions, scenes):
    """Fraction of ``captions`` that :func:`check_caption` finds faithful to their ``scenes``.

    Args:
        captions: list of str, one per scene.
        scenes: list of :class:`~minicap.data.shapes.Scene` (or a ``ShapesData``).
    """
    scenes = getattr(scenes, "scenes", scenes)
    if isinstance(captions, str):
        raise ValueError("captions must be a list of str (one per scene), got a single str")
    captions, scenes = list(captions), list(scenes)
    if len(captions) != len(scenes):
        raise ValueError(f"got {len(captions)} captions for {len(scenes)} scenes; pass one caption per scene")
    if not captions:
        raise ValueError("faithfulness_rate needs at least one caption, got none")
    return sum(check_caption(c, s).faithful for c, s in zip(captions, scenes)) / len(captions)
