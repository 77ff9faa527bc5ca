"""tools/rehearse_photos.py: the photos path rehearsed on stand-ins, and the pages that quote its full-size run."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools import rehearse_photos
from minicap.data.flickr8k import read_split_file, read_token_file

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.single_backend


def page_text(page):
    """What a page says: a notebook's markdown cells, or the file's text."""
    path = ROOT / page
    if page.endswith(".ipynb"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def test_the_pages_quote_the_full_size_rehearsal_as_it_measured():
    report = json.loads(rehearse_photos.QUOTED_REPORT.read_text())
    assert report["data"]["images"] == 8091 and report["data"]["captions"] == 40455  # Flickr8k's size
    assert report["data"]["splits"] == {"train": 6000, "dev": 1000, "test": 1000}
    assert report["machine"]["cpu"] and report["machine"]["cores"]  # it names the machine
    block = rehearse_photos.quote(report)
    for page in rehearse_photos.QUOTING_PAGES:
        assert rehearse_photos.quoted_blocks(page_text(page)) == [block], (
            f"{page} does not quote {rehearse_photos.QUOTED_REPORT.name} as it is: run "
            f"python -m tools.rehearse_photos --update-pages")
    assert "estimate" in block and "not measurements" in block


def test_split_counts_keep_flickr8ks_proportions():
    assert rehearse_photos.split_counts(8091) == {"train": 6000, "dev": 1000, "test": 1000}
    assert rehearse_photos.split_counts(809) == {"train": 600, "dev": 100, "test": 100}
    with pytest.raises(ValueError, match="--images 2 is too few"):
        rehearse_photos.split_counts(2)


def test_the_stand_in_archives_are_flickr8ks_formats(tmp_path):
    digests, held = rehearse_photos.write_archives(tmp_path, 20, log=lambda *_: None)
    assert held["captions"] == 100 and set(digests) == {"text", "images"}
    with zipfile.ZipFile(tmp_path / "Flickr8k_text.zip") as text:
        text.extractall(tmp_path / "text")
    captions = read_token_file(tmp_path / "text" / "Flickr8k.token.txt")
    assert len(captions) == 20 and all(len(c) == 5 for c in captions.values())
    listed = [read_split_file(tmp_path / "text" / name) for name in
              ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt")]
    assert [len(names) for names in listed] == [15, 2, 2] and not set(listed[0]) & set(listed[2])
    with zipfile.ZipFile(tmp_path / "Flickr8k_Dataset.zip") as images:
        names = images.namelist()
        from PIL import Image

        sizes = {Image.open(images.open(name)).size for name in names}
    assert len(names) == 20 and all(n.startswith("Flicker8k_Dataset/") for n in names)
    assert max(max(size) for size in sizes) == 500  # Flickr8k's photos: 500 pixels on the longest side


@pytest.mark.slow
def test_the_rehearsal_runs_the_whole_photos_path_and_reports_it(tmp_path):
    # A few photos at 64 pixels: the same path, the real ViT-B/32, in a process of its own (it sets KERAS_HOME).
    output = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, "-m", "tools.rehearse_photos", "--images", "14", "--set", "image_size=64",
         "--set", "batch_size=8", "--output", str(output)],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    phases = report["phases"]
    assert report["machine"]["cores"] == os.cpu_count()
    assert phases["features: train photos through the frozen ViT-B/32"]["shape"] == [10, 4, 768]
    training = phases["training (train(): the decoder on cached features)"]
    assert training["steps"] == training["steps_per_epoch"] == -(-10 * 5 // 8)  # every caption once
    assert phases["evaluation: test split, beam 5"]["images"] == 2
    assert phases["minicap caption: one photo, beam 5, a new process"]["caption"]
    assert report["disk_bytes"]["vit_weights"] > 300 * 2 ** 20  # the real ViT-B/32's size
    for gpu in rehearse_photos.GPUS:
        low, high = (report["estimates"][gpu][case]["total_minutes"] for case in rehearse_photos.ASSUMED)
        assert 0 < low <= high
    assert rehearse_photos.quote(report).count("\n| ") == 5  # the header, its rule and three rows
    assert "report:" in completed.stdout and "estimates (not measured)" in completed.stdout
