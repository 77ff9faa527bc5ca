"""Shapes scenes: a captioning data set whose captions can be checked for truth (chapter 5).

Each image shows 1 to ``max_objects`` coloured shapes (a shape, a colour, a size) placed in
distinct cells of a 3 x 3 grid, with position and size jitter, a tinted background, colour jitter
and pixel noise. Each comes with several true reference captions written in a tiny regular
grammar, the scene's ground truth and one mask per object::

    caption := ["there is"] clause ("and" clause)* ["in the picture"]
    clause  := object [relation object]
    object  := "a" [size] colour shape
    relation := "left of" | "right of" | "above" | "below"

Because the grammar is regular, :func:`check_caption` parses any caption exactly and says whether
every object, attribute and relation it states is true of the scene: the faithfulness metric.

Splits: ``"train"`` and ``"val"`` never contain the (colour, shape) pairs in ``HELDOUT_PAIRS``;
every scene of ``"heldout"`` contains at least one, so it measures compositional generalisation
(every colour and every shape is still seen in training, only these combinations are new).
"""
import dataclasses
import itertools

import numpy as np

__all__ = ["make_shapes", "ShapesData", "Scene", "ShapeObject", "reference_captions", "describe", "true_relations",
           "max_caption_words", "COLOURS", "SHAPES", "HELDOUT_PAIRS"]

#: The shapes a scene's objects take.
SHAPES = ("circle", "square", "triangle", "cross")
#: The colours of the objects.
COLOURS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
#: The (colour, shape) pairs kept out of training and validation scenes, which the held-out split tests: one
#: pair per shape and per colour but purple, so each colour and each shape still has 3+ partners in training.
HELDOUT_PAIRS = (("red", "square"), ("green", "triangle"), ("blue", "cross"), ("yellow", "circle"))
SPLITS = ("train", "val", "heldout")
CAPTIONS_PER_IMAGE = 4
GRID = 3  # objects sit in distinct cells of a GRID x GRID grid, so relations are never borderline

_RGB = {
    "red": (215, 45, 40), "green": (45, 175, 60), "blue": (45, 85, 225),
    "yellow": (235, 205, 40), "purple": (155, 60, 195),
}
_RADIUS = {"small": 0.075, "large": 0.125}  # half-extent, as a fraction of the image size


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: ``centre`` is ``(x, y)`` in pixels (x to the right, y down) and
    ``radius`` its half-extent in pixels."""

    shape: str
    colour: str
    size: str
    centre: tuple
    radius: float


@dataclasses.dataclass
class Scene:
    """The ground truth of one image: its objects and one boolean mask per object."""

    objects: list
    masks: np.ndarray  # (num_objects, H, W) bool, same order as objects
    image_size: int

    def to_dict(self):
        """The scene as JSON-ready data (masks left out)."""
        return {"image_size": self.image_size, "objects": [dataclasses.asdict(o) for o in self.objects]}


@dataclasses.dataclass
class ShapesData:
    """Images ``(N, H, W, 3)`` uint8, their reference captions and their scenes."""

    images: np.ndarray
    captions: list
    scenes: list
    split: str
    seed: int

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.captions[index], self.scenes[index]


def make_shapes(num_images, split="train", seed=0, image_size=64, max_objects=3, noise=6.0):
    """Draw ``num_images`` scenes, deterministically for ``(split, seed)``.

    Args:
        num_images: how many images.
        split: ``"train"``, ``"val"`` or ``"heldout"`` (see the module docstring).
        seed: the random seed; the same seed and split always give the same scenes, and the
            first ``n`` scenes do not depend on ``num_images``.
        image_size: side of the square images in pixels (at least 24).
        max_objects: 1 to 3 objects per image, drawn uniformly.
        noise: standard deviation of the Gaussian pixel noise (0 to 255 scale).

    Returns:
        a :class:`ShapesData`.

    Example:
        >>> scenes = make_shapes(4, split="train", seed=0, image_size=64, max_objects=2)
        >>> scenes.images.shape, len(scenes.captions[0]), len(scenes.scenes)
        ((4, 64, 64, 3), 4, 4)
    """
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 24:
        raise ValueError(f"image_size must be an int >= 24 pixels, got {image_size!r}")
    if max_objects not in (1, 2, 3):
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    # Pixel noise comes from its own stream, drawn in chunks whose size depends only on the image
    # size, so the first n scenes never depend on num_images.
    noise_rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    chunk = max(1, (1 << 22) // (image_size * image_size * 3))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    allowed = [p for p in pairs if p not in HELDOUT_PAIRS]
    coords = np.arange(image_size, dtype=np.float32) + 0.5  # pixel centres
    xs, ys = coords[None, :], coords[:, None]
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    canvas = np.zeros((chunk, image_size, image_size, 3), dtype=np.float32)
    captions, scenes = [], []
    for index in range(num_images):
        count = int(rng.integers(1, max_objects + 1))
        if split == "heldout":
            first = HELDOUT_PAIRS[rng.integers(len(HELDOUT_PAIRS))]
            others = [p for p in pairs if p != first]
            chosen = [first] + [others[i] for i in rng.permutation(len(others))[: count - 1]]
            chosen = [chosen[i] for i in rng.permutation(count)]
        else:
            chosen = [allowed[i] for i in rng.permutation(len(allowed))[:count]]
        cells = rng.permutation(GRID * GRID)[:count]
        objects, masks = _draw(rng, canvas[index % chunk], chosen, cells, image_size, xs, ys)
        scene = Scene(objects, masks, int(image_size))
        scenes.append(scene)
        captions.append(reference_captions(scene, rng))
        if index % chunk == chunk - 1 or index == num_images - 1:
            start = index - index % chunk
            if noise:
                canvas += noise_rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise)
            np.clip(canvas, 0, 255, out=canvas)
            images[start : index + 1] = canvas[: index + 1 - start]
    return ShapesData(images, captions, scenes, split, seed)


def _draw(rng, canvas, chosen, cells, image_size, xs, ys):
    """Paint one scene into the float32 ``canvas`` (H, W, 3); return its objects and masks."""
    cell = image_size / GRID
    canvas[:] = rng.uniform(70, 120) + rng.uniform(-15, 15, size=3)  # tinted background
    objects, masks = [], []
    for (colour, shape), cell_index in zip(chosen, cells):
        size = SIZES[rng.integers(2)]
        radius = _RADIUS[size] * image_size * rng.uniform(0.92, 1.08)
        # Jitter that keeps the object inside its cell and relations unambiguous (see true_relations).
        slack = max(min(cell / 2 - radius - 1.0, 0.07 * image_size), 0.0)
        row, col = divmod(int(cell_index), GRID)
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        mask = _shape_mask(shape, cx, cy, radius, xs, ys)
        canvas[mask] = np.clip(np.array(_RGB[colour]) + rng.uniform(-18, 18, size=3), 0, 255)
        objects.append(ShapeObject(shape, colour, size, (float(cx), float(cy)), float(radius)))
        masks.append(mask)
    return objects, np.stack(masks)


def _shape_mask(shape, cx, cy, radius, xs, ys):
    """Boolean (H, W) mask of one shape centred at (cx, cy) with half-extent ``radius``."""
    dx, dy = xs - cx, ys - cy  # (1, W) and (H, 1): broadcasting gives (H, W) masks
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
    if shape == "triangle":  # pointing up: apex at the top, base at the bottom
        top, bottom = -radius, 0.8 * radius
        depth = (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= depth * radius)
    if shape == "cross":
        arm = 0.35 * radius
        return ((np.abs(dx) <= radius) & (np.abs(dy) <= arm)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))
    raise ValueError(f"unknown shape {shape!r}; valid shapes are {SHAPES}")


def max_caption_words(max_objects=3):
    """The most words a reference caption of a scene with up to ``max_objects`` objects has:
    9 ("there is a small red circle in the picture"), 12 or 21. A decoder needs
    ``max_length >= max_caption_words(...) + 1`` positions ([START] + words) to see them whole."""
    if max_objects not in (1, 2, 3):
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects!r}")
    return {1: 9, 2: 12, 3: 21}[max_objects]


def describe(obj):
    """``"a small red circle"`` for an object."""
    return f"a {obj.size} {obj.colour} {obj.shape}"


def true_relations(a, b, image_size):
    """The relations from ``RELATIONS`` that hold for ``a`` relative to ``b``.

    ``a`` is left of ``b`` when its centre is more than a sixth of the image further left. In
    generated scenes, centres in one grid column differ by at most 0.14 of the image and centres
    in different columns by at least 0.19, so a relation is never borderline.
    """
    margin = image_size / (2 * GRID)
    (ax, ay), (bx, by) = a.centre, b.centre
    holds = {"left of": bx - ax > margin, "right of": ax - bx > margin, "above": by - ay > margin, "below": ay - by > margin}
    return [r for r in RELATIONS if holds[r]]


def reference_captions(scene, rng=None):
    """``CAPTIONS_PER_IMAGE`` distinct true captions of ``scene`` (orderings and phrasings)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    objects, size = scene.objects, scene.image_size
    relations = {
        (i, j): true_relations(a, b, size) for i, a in enumerate(objects) for j, b in enumerate(objects) if i != j
    }
    for (i, j), holding in relations.items():
        if not holding:
            raise ValueError(
                f"objects {i} and {j} of the scene are too close for any relation (centres "
                f"{objects[i].centre} and {objects[j].centre}); place them in different grid cells"
            )
    names = [describe(o) for o in objects]
    if len(objects) == 1:
        base = names[0]
        candidates = [base, f"there is {base}", f"{base} in the picture", f"there is {base} in the picture"]
    elif len(objects) == 2:
        candidates = [f"{names[i]} {r} {names[j]}" for i, j in ((0, 1), (1, 0)) for r in relations[i, j]]
        candidates += [f"there is {c}" for c in candidates]
    else:
        # "X rel Y and Z rel Y" for every order, each relation drawn among the true ones.
        draws = iter(rng.integers(0, 1 << 30, size=24).tolist())
        candidates = []
        for first, middle, last in itertools.permutations(range(len(objects))):
            left, right = relations[first, middle], relations[last, middle]
            for _ in range(2):
                candidates.append(
                    f"{names[first]} {left[next(draws) % len(left)]} {names[middle]} and "
                    f"{names[last]} {right[next(draws) % len(right)]} {names[middle]}"
                )
    unique = list(dict.fromkeys(candidates))
    # Every scene has at least 4 phrasings (two objects on one axis: 2 orders, with and without "there is").
    return [unique[i] for i in sorted(rng.permutation(len(unique))[:CAPTIONS_PER_IMAGE].tolist())]
