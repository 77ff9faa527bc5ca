"""Download on demand, verify, cache and extract data set archives safely (chapter 5).

The real captioning data sets are archives on remote servers. :func:`fetch` downloads one to the
cache directory under a temporary name, checks its size and checksum, and only then gives it its
real name: a corrupt or interrupted download is deleted and never used, and the next call
downloads again. :func:`extract` unpacks a zip or tar archive, refusing any member that would land
outside the target directory (``../`` paths, absolute paths, links pointing outside).
"""
import hashlib
import os
import tarfile
import urllib.request
import zipfile

from tqdm.auto import tqdm

from minicap.config import parse_hash

__all__ = ["fetch", "extract", "fetch_and_extract", "default_cache_dir", "file_digest", "find_file", "find_directory"]

# Replaced in tests (or by a proxy-aware opener); any callable like urllib.request.urlopen works.
urlopen = urllib.request.urlopen
_CHUNK = 1 << 20


def default_cache_dir():
    """``$MINICAP_DATA``, else ``$KERAS_HOME/datasets/minicap``, else ``~/.keras/datasets/minicap``."""
    if os.environ.get("MINICAP_DATA"):
        return os.environ["MINICAP_DATA"]
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "minicap")


def file_digest(path, algorithm="sha256"):
    """Hex digest of the file at ``path``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url, cache_dir=None, file_name=None, file_hash=None, progress=False):
    """Return the path of ``url``'s file in ``cache_dir``, downloading it if needed.

    Args:
        url: where to download from (``https://``, ``http://`` or ``file://``).
        cache_dir: the directory to keep it in (default :func:`default_cache_dir`).
        file_name: its name there (default: the last part of the URL).
        file_hash: the expected ``"sha256:..."`` or ``"md5:..."`` digest. Without one, the
            SHA-256 of the first complete download is recorded next to the file (``.sha256``)
            and later calls check the cached file against it.
        progress: show a progress bar while downloading (bytes received of the announced size).

    Raises:
        ValueError: the download is incomplete or its checksum does not match; the partial
            file has been deleted, so calling again downloads it again.
    """
    expected = parse_hash(file_hash)
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    file_name = file_name or os.path.basename(urllib.request.urlparse(url).path)
    if not file_name:
        raise ValueError(f"cannot tell a file name from url {url!r}; pass file_name")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, file_name)
    record = path + ".sha256"
    if os.path.isfile(path):
        if expected is None and os.path.isfile(record):
            with open(record) as file:
                check = ("sha256", file.read().strip())
        else:
            check = expected
        if check is None or file_digest(path, check[0]) == check[1]:
            return path
        os.remove(path)  # a cached file that no longer matches is never used
    partial = path + ".partial"
    try:
        _download(url, partial, progress=progress)
        if expected is not None:
            actual = file_digest(partial, expected[0])
            if actual != expected[1]:
                raise ValueError(
                    f"checksum mismatch for {url}: expected {expected[0]} {expected[1]}, got {actual}; the "
                    f"corrupt download was deleted, call again to download it again"
                )
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)
    if expected is None:
        with open(record, "w") as file:
            file.write(file_digest(path, "sha256"))
    return path


def _download(url, destination, progress=False):
    """Stream ``url`` to ``destination``; raise ValueError when fewer bytes arrive than announced."""
    received = 0
    with urlopen(url) as response, open(destination, "wb") as file:
        announced = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
        bar = tqdm(total=int(announced) if announced else None, unit="B", unit_scale=True, disable=not progress,
                   desc=os.path.basename(urllib.request.urlparse(url).path) or url)
        with bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if announced is not None and received != int(announced):
        raise ValueError(
            f"interrupted download of {url}: received {received} of {announced} bytes; the partial file "
            f"was deleted, call again to download it again"
        )


def _inside(root, name):
    """True when ``name`` (an archive member path) lands inside the directory ``root``."""
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    target = os.path.realpath(os.path.join(root, name))
    return target == root or target.startswith(root + os.sep)


def extract(archive, destination):
    """Unpack a ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz`` archive into ``destination``, once.

    Every member is checked before anything is written: a member whose path would land outside
    ``destination``, or a tar link pointing outside it, or a device file, raises a ValueError
    naming the member. A marker file records a finished extraction, so an interrupted one is
    simply redone on the next call.
    """
    archive, destination = os.fspath(archive), os.fspath(destination)
    os.makedirs(destination, exist_ok=True)
    root = os.path.realpath(destination)
    marker = os.path.join(destination, f".extracted-{os.path.basename(archive)}")
    if os.path.exists(marker):
        return destination

    def refuse(member, why):
        raise ValueError(f"refusing to extract {archive!r}: member {member!r} {why}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if not _inside(root, name.replace("\\", "/")):
                    refuse(name, f"would land outside {destination!r}")
            zipped.extractall(destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tarred:
            members = tarred.getmembers()
            for member in members:
                if not _inside(root, member.name):
                    refuse(member.name, f"would land outside {destination!r}")
                if member.issym() or member.islnk():
                    base = os.path.dirname(member.name) if member.issym() else ""
                    if not _inside(root, os.path.join(base, member.linkname)):
                        refuse(member.name, f"links to {member.linkname!r}, outside {destination!r}")
                elif not (member.isfile() or member.isdir()):
                    refuse(member.name, "is a device or special file")
            if hasattr(tarfile, "data_filter"):
                tarred.extractall(destination, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tarred.extractall(destination, members=members)
    else:
        raise ValueError(f"{archive!r} is not a zip or tar archive")
    with open(marker, "w") as file:
        file.write("done\n")
    return destination


def fetch_and_extract(url, cache_dir, file_hash=None, destination=None):
    """Download ``url`` into ``cache_dir/downloads`` and extract it into ``destination``
    (default ``cache_dir``); return ``destination``."""
    archive = fetch(url, os.path.join(cache_dir, "downloads"), file_hash=file_hash)
    destination = destination or cache_dir
    try:
        return extract(archive, destination)
    except ValueError:  # not an archive, or a member outside the destination: never use it again
        _discard(archive)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        _discard(archive)
        raise ValueError(f"archive {archive!r} from {url} is corrupt ({error}); it was deleted") from None


def _discard(archive):
    """Delete a downloaded archive and its recorded checksum."""
    for path in (archive, archive + ".sha256"):
        if os.path.exists(path):
            os.remove(path)


def find_file(root, name):
    """The path of the first file called ``name`` under ``root`` (archives nest differently)."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__MACOSX")
        if name in files:
            return os.path.join(directory, name)
    raise FileNotFoundError(f"no file named {name!r} under {os.fspath(root)!r}")


def find_directory(root, name):
    """The path of the first directory called ``name`` under ``root`` (``root`` itself included)."""
    for directory, subdirectories, _ in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__MACOSX")
        if os.path.basename(directory) == name:
            return directory
    raise FileNotFoundError(f"no directory named {name!r} under {os.fspath(root)!r}")
