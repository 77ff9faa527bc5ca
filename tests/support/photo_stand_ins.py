"""Offline stand-ins, in the real formats, for what the photos path downloads.

No machine of the project reaches Flickr8k's or the ViT weights' hosts, so the tests build the same files:

- :func:`write_flickr8k`: ``Flickr8k_Dataset.zip`` (JPEGs of several sizes and colour modes in
  ``Flicker8k_Dataset/``) and ``Flickr8k_text.zip`` (``Flickr8k.token.txt`` and the three official split
  lists), served by :func:`serve` from 127.0.0.1 so that the real download, checksum and extraction run;
- :func:`write_vit_weights`: a ViT's weights in the official ``.npz`` key layout (attention kernels
  split by head, a classifier head included), random values; :func:`write_vit_b_weights` writes a ViT-B
  file (for a mirror served from 127.0.0.1) and :func:`install_vit_weights` puts one in the weights cache
  (``$KERAS_HOME/weights``, where vit-keras keeps its downloads too);
- :func:`write_caption_folder`: a reader's own folder of photos with a ``captions.csv``.
"""
import contextlib
import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# A tiny world of photos: each image is a coloured scene whose captions name its colour and subject.
SUBJECTS = ("dog", "child", "bicycle", "boat", "horse")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (230, 200, 40)}
# (width, height, PIL mode): landscape and portrait photos, a tiny one, grayscale and CMYK JPEGs.
FORMATS = [(500, 375, "RGB"), (333, 500, "RGB"), (640, 427, "L"), (48, 40, "RGB"), (500, 333, "CMYK")]
# The photos profile at sizes a CPU can afford in a test: ViT-B/32 itself on 64-pixel images (2 x 2 patches),
# the article's decoder width and heads, one decoder layer.
SMALL_PHOTOS = {"image_size": 64, "epochs": 2, "batch_size": 8, "mixed_precision": False, "min_word_count": 1,
                "max_length": 12, "decoder_layers": 1, "mlp_dim": 256}


def photo(index, rng):
    """A JPEG of image ``index`` (bytes) and its five captions."""
    colour = list(COLOURS)[index % len(COLOURS)]
    subject = SUBJECTS[index % len(SUBJECTS)]
    width, height, mode = FORMATS[index % len(FORMATS)]
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    captions = [f"A {colour} {subject} in the picture .", f"a {subject} that is {colour}",
                f"There is a {colour} {subject} here .", f"A photo of a {subject} , {colour} all over .",
                f"the {colour} {subject}"]
    return buffer.getvalue(), captions


def write_flickr8k(directory, splits=(("train", 12), ("dev", 4), ("test", 4)), seed=0):
    """Write the two Flickr8k archives into ``directory``; return ``{"text": ..., "images": ...}``
    SHA-256 digests (the form ``data_hashes`` takes) and the image names per split."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names, lines, index = {}, [], 0
    with zipfile.ZipFile(directory / "Flickr8k_Dataset.zip", "w") as images:
        for split, count in splits:
            names[split] = []
            for _ in range(count):
                name = f"{1000 + index}_{index:04x}.jpg"
                data, captions = photo(index, rng)
                images.writestr(f"Flicker8k_Dataset/{name}", data)
                lines += [f"{name}#{number}\t{caption}" for number, caption in enumerate(captions)]
                names[split].append(name)
                index += 1
    split_files = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                   "test": "Flickr_8k.testImages.txt"}
    with zipfile.ZipFile(directory / "Flickr8k_text.zip", "w") as text:
        text.writestr("Flickr8k.token.txt", "\n".join(lines) + "\n")
        for split, file in split_files.items():
            text.writestr(file, "\n".join(names.get(split, [])) + "\n")
    digests = {key: "sha256:" + hashlib.sha256((directory / file).read_bytes()).hexdigest()
               for key, file in (("text", "Flickr8k_text.zip"), ("images", "Flickr8k_Dataset.zip"))}
    return digests, names


def write_caption_folder(folder, count=10, seed=1, layout="csv"):
    """A reader's own folder: ``count`` photos and a ``captions.csv`` (``image,caption``, five rows per
    image); ``layout="kaggle"`` writes Kaggle's Flickr8k layout instead (``captions.txt`` + ``Images/``)."""
    folder = Path(folder)
    image_dir = folder / ("Images" if layout == "kaggle" else "photos")
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["image,caption"]
    for index in range(count):
        data, captions = photo(index, rng)
        name = f"photo_{index:03d}.jpg"
        (image_dir / name).write_bytes(data)
        relative = name if layout == "kaggle" else f"photos/{name}"
        rows += [f'{relative},"{caption}"' for caption in captions]
    (folder / ("captions.txt" if layout == "kaggle" else "captions.csv")).write_text("\n".join(rows) + "\n")
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(directory):
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port); yield its base URL, ending in ``/``."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def official_key(path):
    """The key of a vit-keras weight (its Keras path) in the official ``.npz`` files."""
    path = path.replace("/gamma", "/scale").replace("/beta", "/bias")
    if path == "class_token/cls":
        return "cls"
    path = path.replace("Transformer_posembed_input", "Transformer/posembed_input")
    path = path.replace("Transformer_encoder_norm", "Transformer/encoder_norm")
    parts = path.split("/")
    if parts[0].startswith("Transformer_encoderblock_"):
        block = parts[0].replace("Transformer_encoderblock_", "Transformer/encoderblock_")
        if parts[1] == "MlpBlock_3":  # Keras names its Dense layers "<block>_Dense_0"
            parts[2] = parts[2].split("_")[-2] + "_" + parts[2].split("_")[-1]
        path = "/".join([block] + parts[1:])
    return path


def official_shapes(patch_size, hidden_size, num_layers, num_heads, mlp_dim, grid, pre_logits=False, classes=10):
    """``{key: shape}`` of an official ViT ``.npz`` file (Google's Flax layout, as vit-keras's release assets
    hold it) for this architecture and a ``grid x grid`` patch grid: attention kernels split by head, the
    patch embedding a convolution kernel, and a classifier head (``pre_logits`` too in the ImageNet-21k files)."""
    width, head_width = hidden_size, hidden_size // num_heads
    shapes = {"embedding/kernel": (patch_size, patch_size, 3, width), "embedding/bias": (width,),
              "cls": (1, 1, width), "Transformer/posembed_input/pos_embedding": (1, 1 + grid * grid, width),
              "Transformer/encoder_norm/scale": (width,), "Transformer/encoder_norm/bias": (width,),
              "head/kernel": (width, classes), "head/bias": (classes,)}
    if pre_logits:
        shapes.update({"pre_logits/kernel": (width, width), "pre_logits/bias": (width,)})
    for index in range(num_layers):
        block = f"Transformer/encoderblock_{index}"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            shapes.update({f"{block}/{norm}/scale": (width,), f"{block}/{norm}/bias": (width,)})
        attention = f"{block}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            shapes.update({f"{attention}/{name}/kernel": (width, num_heads, head_width),
                           f"{attention}/{name}/bias": (num_heads, head_width)})
        mlp = f"{block}/MlpBlock_3"
        shapes.update({f"{attention}/out/kernel": (num_heads, head_width, width), f"{attention}/out/bias": (width,),
                       f"{mlp}/Dense_0/kernel": (width, mlp_dim), f"{mlp}/Dense_0/bias": (mlp_dim,),
                       f"{mlp}/Dense_1/kernel": (mlp_dim, width), f"{mlp}/Dense_1/bias": (width,)})
    return shapes


def write_vit_weights(path, patch_size, hidden_size, num_layers, num_heads, mlp_dim, grid, scale=1.0, seed=1,
                      pre_logits=False):
    """Random weights in the official ``.npz`` layout (see :func:`official_shapes`); return the arrays.

    ``scale`` is the standard deviation of the values (1 by default; 0.02, as ViT initialises, keeps a
    12-layer network's activations in range). Norm scales are drawn around 1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in official_shapes(patch_size, hidden_size, num_layers, num_heads, mlp_dim, grid,
                                      pre_logits).items():
        values = rng.normal(0.0, scale, size=shape)
        arrays[key] = (1.0 + values if key.endswith("/scale") else values).astype("float32")
    np.savez(path, **arrays)
    return arrays


def write_vit_b_weights(path, variant="vit-b32", weights="imagenet21k+imagenet2012"):
    """Random ViT-B weights in an official file at ``path`` (the official files are for 224 pixels); return
    ``"sha256:<digest>"`` of the file."""
    from minicap.config import VIT_VARIANTS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    architecture = VIT_VARIANTS[variant]
    partial = path.with_name(path.name + ".partial.npz")
    write_vit_weights(partial, grid=224 // architecture["patch_size"], scale=0.02,
                      pre_logits=weights == "imagenet21k", **architecture)
    partial.replace(path)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def install_vit_weights(keras_home, variant="vit-b32", weights="imagenet21k+imagenet2012"):
    """Write random ViT-B weights into the weights cache, ``keras_home/weights`` (e.g.
    ``ViT-B_32_imagenet21k+imagenet2012.npz``), where both implementations (and vit-keras's own download)
    look first, so that loading the "pretrained" backbone runs the real code path offline. Return the path."""
    from minicap.vit_weights import weights_file_name

    target = Path(keras_home) / "weights" / weights_file_name(variant, weights)
    if not target.exists():
        write_vit_b_weights(target, variant, weights)
    return target
