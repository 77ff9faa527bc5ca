"""Where the pretrained ViT-B weights come from: the official ``.npz`` files, from a local path, a mirror or GitHub,
each checksum-verified, and read without unpickling anything (chapter 4). The variants' sizes and the weights' names
are settings: ``minicap.config.VIT_VARIANTS`` and ``VIT_WEIGHTS``.

Google released the weights of the ViT paper (Dosovitskiy et al., 2020) as ``.npz`` files of named arrays
(``embedding/kernel``, ``Transformer/encoderblock_0/...``), pretrained on ImageNet-21k (``imagenet21k``) and
then fine-tuned on ImageNet-2012 (``imagenet21k+imagenet2012``). vit-keras publishes the same files as assets
of a GitHub release, named ``ViT-B_32_imagenet21k+imagenet2012.npz`` and so on. Both of minicap's ViT
implementations load them (``minicap.vit``), and :func:`weights_file` finds them, in this order:

1. **a local file**: ``backbone_weights`` given as the path of a ``.npz`` file; for a name, the file of
   that name in the cache, ``$KERAS_HOME/weights`` (default ``~/.keras/weights``), where vit-keras keeps
   its downloads too, so that a file it downloaded is reused;
2. **a mirror**: ``$MINICAP_VIT_MIRROR``, an ``https://``, ``http://`` or ``file://`` address (or a local
   folder) of a folder that holds the files under their official names;
3. **GitHub**: the release that vit-keras downloads from (:data:`GITHUB_RELEASE_URL`).

**Checksums.** Neither Google nor vit-keras publishes a digest of these files, and none could be found in
public code that downloads them, so none is pinned here (an invented one would protect nothing). Give the
digest you trust with ``file_hash`` (``CaptionConfig.backbone_weights_hash``, ``"sha256:..."``): every
source is then checked against it. Without one, the SHA-256 of the first download is recorded next to the
cached file (``.sha256``) and the file is checked against that record at every later use, so a file
damaged on disk is noticed and downloaded again.
"""
import http.client
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from minicap.config import VIT_VARIANTS, VIT_WEIGHTS, parse_hash
from minicap.data.download import fetch, file_digest

__all__ = ["weights_file", "weights_file_name", "weights_cache_dir", "read_weights_file", "check_official_keys",
           "check_file", "vit_architecture"]

# Where vit-keras downloads the official files from.
GITHUB_RELEASE_URL = "https://github.com/faustomorales/vit-keras/releases/download/dl"
MIRROR_VARIABLE = "MINICAP_VIT_MIRROR"


def vit_architecture(variant, **given):
    """The ViT architecture of ``variant`` (a key of ``VIT_VARIANTS``, or None) with the sizes in ``given``
    (``patch_size``, ``hidden_size``, ``num_layers``, ``num_heads``, ``mlp_dim``) that are not None."""
    if variant is not None and variant not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; choose one of {sorted(VIT_VARIANTS)} or None")
    architecture = dict(VIT_VARIANTS[variant]) if variant else {}
    for name in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim"):
        if given.get(name) is not None:
            architecture[name] = given[name]
        elif name not in architecture:
            raise ValueError(f"a ViT with variant=None needs {name}; got None")
    return architecture


# The size part of the official file names, per variant.
FILE_SIZES = {"vit-b16": "B_16", "vit-b32": "B_32"}


def weights_file_name(variant, weights):
    """The official file name of ``weights`` for ``variant``, e.g. ``ViT-B_32_imagenet21k+imagenet2012.npz``."""
    if variant not in FILE_SIZES:
        raise ValueError(f"weights {weights!r} exist for the variants {sorted(FILE_SIZES)} only, got variant "
                         f"{variant!r}: give the path of a .npz file instead")
    if weights not in VIT_WEIGHTS:
        raise ValueError(f"weights must be one of {list(VIT_WEIGHTS)} or the path of a .npz file, got {weights!r}")
    return f"ViT-{FILE_SIZES[variant]}_{weights}.npz"


def weights_cache_dir():
    """``$KERAS_HOME/weights`` (default ``~/.keras/weights``): vit-keras's download folder too."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "weights")


def _folder_url(folder):
    """A mirror folder as a URL ending in ``/``: an address as it is, a local folder as ``file://``."""
    folder = str(folder)
    if "://" not in folder:
        if not os.path.isdir(folder):
            raise ValueError(f"{MIRROR_VARIABLE} {folder!r} is neither an https://, http:// or file:// address "
                             f"nor a local folder")
        folder = Path(folder).resolve().as_uri()
    return folder.rstrip("/") + "/"


def check_file(path, file_hash):
    """Raise ValueError when the file at ``path`` does not have the digest ``file_hash`` (if one is given)."""
    expected = parse_hash(file_hash)
    if expected is not None:
        actual = file_digest(path, expected[0])
        if actual != expected[1]:
            raise ValueError(f"checksum mismatch for {path}: expected {expected[0]} {expected[1]}, got {actual}")
    return path


def weights_file(weights, variant, file_hash=None, mirror=None, cache_dir=None, progress=True):
    """The local path of pretrained ViT weights, downloaded and verified if needed.

    Args:
        weights: a name in :data:`VIT_WEIGHTS`, or the path of an official-format ``.npz`` file.
        variant: ``"vit-b16"`` or ``"vit-b32"``, for a name.
        file_hash: the expected ``"sha256:..."`` (or ``"md5:..."``) digest of the file, whatever its source.
        mirror: a folder address to try before GitHub (default ``$MINICAP_VIT_MIRROR``).
        cache_dir: where downloads are kept (default :func:`weights_cache_dir`).
        progress: show a progress bar while downloading.

    Raises:
        FileNotFoundError: a path that does not exist; or no source gave a verified file: the message
            names the local file, the mirror and GitHub, and what went wrong with each.
        ValueError: a bad name or digest, or a local file whose checksum does not match.
    """
    parse_hash(file_hash)  # a malformed digest is reported before anything is downloaded
    if weights not in VIT_WEIGHTS:
        if not str(weights).endswith(".npz"):
            raise ValueError(f"weights must be one of {list(VIT_WEIGHTS)} or the path of a .npz file, "
                             f"got {weights!r}")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"ViT weights file {str(weights)!r} does not exist")
        return check_file(os.fspath(weights), file_hash)
    name = weights_file_name(variant, weights)
    cache_dir = os.fspath(cache_dir or weights_cache_dir())
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_VARIABLE) or None
    sources = [("the mirror", _folder_url(mirror) + name if mirror else None),
               ("GitHub", f"{GITHUB_RELEASE_URL}/{name}")]
    failures = []
    for where, url in sources:
        if url is None:
            failures.append(f"{where}: none set (set {MIRROR_VARIABLE} to a folder address holding {name})")
            continue
        try:  # a verified file in the cache is returned without a download
            return fetch(url, cache_dir, name, file_hash, progress=progress)
        except (OSError, ValueError, http.client.HTTPException) as error:
            failures.append(f"{where}: {url}: {error}")
    tried = "\n".join(f"  {number}. {failure}" for number, failure in enumerate(
        [f"a local file: no verified {os.path.join(cache_dir, name)}; or pass backbone_weights='/path/to/{name}'"]
        + failures, start=1))
    raise FileNotFoundError(f"could not get the ViT weights {weights!r} ({name}) from any of:\n{tried}")


def read_weights_file(path):
    """The named arrays of an official ViT ``.npz`` file, read without ever unpickling anything.

    A file that is not such an archive (empty, cut short, another kind of file, a single ``.npy`` array),
    holds Python objects instead of plain arrays, or holds no arrays is a ValueError of one line that names the
    file, what is wrong with it, and what to do. A damaged file in the weights cache (a download) is deleted, so
    that the next run downloads it again; a file of yours is left as it is.
    """
    path = os.fspath(path)
    problem = _weights_file_problem(path)
    arrays = None
    if problem is None:
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except ValueError:  # numpy's own message would advise allow_pickle: never shown, never taken
            problem = "it holds Python objects (pickled data), not plain arrays, and minicap never unpickles a file"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as error:
            problem = f"it is damaged ({type(error).__name__}: {error})"
    if problem is None and not arrays:
        problem = "it holds no arrays"
    if problem is None:
        return arrays
    cached = Path(path).resolve().parent == Path(weights_cache_dir()).resolve()
    if cached:
        for damaged in (path, path + ".sha256"):
            if os.path.exists(damaged):
                os.remove(damaged)
        advice = "it was deleted from the weights cache: the next run downloads it again"
    else:
        advice = "pass the official .npz file (see the README, 'The ViT weights') or delete it and name the weights"
    raise ValueError(f"{path} is not usable ViT weights: {problem}; {advice}")


def _weights_file_problem(path):
    """What makes ``path`` no ``.npz`` archive at all, or None."""
    if os.path.getsize(path) == 0:
        return "it is empty (0 bytes)"
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as file:
        start = file.read(6)
    if start == b"\x93NUMPY":
        return "it is a single NumPy array (.npy), not an .npz archive of named arrays"
    return "it is not an .npz archive (a download cut short, or another kind of file)"


def check_official_keys(arrays, architecture, path):
    """Raise ValueError when ``arrays`` (from :func:`read_weights_file`) are not an official ViT file of
    ``architecture``: the patch embedding, class token, position table and final norm, and one block per
    layer, the patch embedding of the right shape."""
    blocks = {key.split("/")[1] for key in arrays if key.startswith("Transformer/encoderblock_")}
    if len(blocks) != architecture["num_layers"]:
        raise ValueError(f"{path} holds {len(blocks)} encoder blocks; this ViT has {architecture['num_layers']} "
                         f"(architecture {architecture})")
    for key in ("embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding", "Transformer/encoder_norm/scale"):
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r}: not an official ViT weights file")
    patch, width = architecture["patch_size"], architecture["hidden_size"]
    if arrays["embedding/kernel"].shape != (patch, patch, 3, width):
        raise ValueError(f"{path}: array 'embedding/kernel' has shape {arrays['embedding/kernel'].shape}; this ViT "
                         f"needs {(patch, patch, 3, width)} (architecture {architecture})")
