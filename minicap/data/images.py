"""Image files to RGB uint8 arrays of one size (chapter 5).

Real data sets hold every kind of JPEG and PNG: grayscale, palette, RGBA, CMYK, 16-bit, huge
scans. :func:`load_image` turns any of them into an ``(H, W, 3)`` uint8 array, resized to the
model's input size, and names the file when it cannot be read.
"""
import os
import tempfile
import urllib.error
import urllib.request
import warnings

import matplotlib.cbook
import numpy as np
from PIL import Image, ImageOps

__all__ = ["load_image", "load_images", "load_photo", "sample_photo", "ImageFiles", "size_pair", "to_rgb"]


def size_pair(image_size):
    """``image_size`` as ``(height, width)``, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    if (
        len(image_size) != 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def to_rgb(image):
    """Convert a PIL image of any mode to RGB (8 bits per channel).

    Transparent pixels are composited onto white; 16- and 32-bit integer images are scaled from
    their full range (not clipped at 255, which would turn most of a 16-bit image white).
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    if image.mode == "F":
        gray = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path, image_size=None):
    """Read one image file as an ``(H, W, 3)`` uint8 RGB array.

    Args:
        path: an image file (JPEG, PNG, ... anything Pillow reads).
        image_size: ``None`` to keep the file's size, or an int / ``(height, width)`` to resize
            to (the aspect ratio is not kept: captions describe the whole image, so nothing is
            cropped away). Large JPEGs are decoded at a reduced scale first (``Image.draft``), so
            a 10,000 x 10,000 photo never needs its full size in memory.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is a directory, or the file is not a readable image (corrupt or
            truncated); the message names the file.
    """
    size = size_pair(image_size)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"image path {path!r} is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            if size is not None:
                # Pillow warns above ~89 megapixels; with a target size the decode is reduced (JPEG)
                # or streamed once, so a big photo is expected here, not an attack.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if size is not None and image.format == "JPEG":
                # Decode at the smallest 1/2, 1/4 or 1/8 scale that is still at least `size`.
                image.draft("RGB", (size[1], size[0]))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC, reducing_gap=3.0)
            return np.asarray(image, dtype=np.uint8).copy()
    except Image.DecompressionBombError as error:
        raise ValueError(f"image file {path!r} is too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path!r}: {error}") from None


def sample_photo():
    """The path of a public-domain photograph to caption when you have none at hand.

    It is the official U.S. Navy portrait of Commodore Grace M. Hopper (1984), a work of the U.S.
    federal government and so in the public domain, which matplotlib ships as sample data
    (``matplotlib.cbook.get_sample_data("grace_hopper.jpg")``): no download needed.
    """
    return os.fspath(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_photo(source, image_size=None, timeout=30):
    """A photo from a file path or an ``http(s)://`` URL as an ``(H, W, 3)`` uint8 RGB array (see
    :func:`load_image`, which names the file or URL when it cannot be read).

    A URL is downloaded into memory (at most 50 MB); a failed download is a ValueError naming the URL.
    """
    source = os.fspath(source)
    if not source.startswith(("http://", "https://")):
        return load_image(source, image_size)
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response:
            data = response.read(50 * 2**20 + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ValueError(f"cannot download the photo at {source!r}: {error}") from None
    if len(data) > 50 * 2**20:
        raise ValueError(f"the photo at {source!r} is larger than 50 MB")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, os.path.basename(urllib.request.urlparse(source).path) or "photo")
        with open(path, "wb") as file:
            file.write(data)
        try:
            return load_image(path, image_size)
        except ValueError as error:
            raise ValueError(str(error).replace(repr(path), repr(source))) from None


def load_images(paths, image_size):
    """Load several files to a ``(num_images, height, width, 3)`` uint8 array."""
    size = size_pair(image_size)
    if size is None:
        raise ValueError("load_images needs an image_size: images of different sizes cannot be stacked")
    paths = list(paths)
    images = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = load_image(path, size)
    return images


class ImageFiles:
    """Image files that read like a uint8 image array: loaded from disk only when indexed.

    ``files[i]`` is one ``(height, width, 3)`` image; ``files[[i, j]]`` or ``files[a:b]`` is a
    ``(n, height, width, 3)`` batch. :class:`~minicap.data.pipeline.CaptionBatches` reads each
    batch this way, so a data set larger than memory trains without loading it whole.

    Args:
        paths: the image files.
        image_size: an int or ``(height, width)`` every image is resized to.
    """

    def __init__(self, paths, image_size):
        self.image_size = size_pair(image_size)
        if self.image_size is None:
            raise ValueError("ImageFiles needs an image_size (an int or (height, width)) to stack images")
        self.paths = [os.fspath(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        """``(num_images, height, width, 3)``, as an array of the images would have."""
        return (len(self.paths), *self.image_size, 3)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return load_image(self.paths[index], self.image_size)
        if isinstance(index, slice):
            return load_images(self.paths[index], self.image_size)
        return load_images([self.paths[i] for i in np.asarray(index).tolist()], self.image_size)
