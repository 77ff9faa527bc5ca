"""A rehearsal of the photos path at Flickr8k's full size, offline, with every phase timed.

No machine of the project reaches Flickr8k or the ViT weights, so this builds stand-ins of the real size and
format and runs the whole photos profile through them, as a reader's Colab notebook would:

- **the archives**: ``Flickr8k_Dataset.zip`` with 8,091 JPEGs at the sizes of Flickr8k's photos (the longest
  side 500 pixels, landscape and portrait) and ``Flickr8k_text.zip`` with 40,455 captions in
  ``Flickr8k.token.txt``'s format (a vocabulary drawn so that, as in Flickr8k, a few thousand words are used
  five times or more) and the official split files (6,000 / 1,000 / 1,000, the rest in no split), served from
  127.0.0.1 and checked against their digests;
- **the ViT-B/32 weights**: a stand-in official ``.npz`` (random values, the real architecture and size),
  served from the same address as ``$MINICAP_VIT_MIRROR``;

then, each phase timed: download and verification, extraction, the model (the weights downloaded and loaded),
the frozen backbone's features (images/s; the JPEG decoding alone too), the feature cache's size on disk, the
decoder's training (step time, epoch time; ``--epochs`` of the profile's, the whole run extrapolated), the
input pipeline's share of a step, BLEU and CIDEr-D on the test split (greedy and beam search), and
``minicap caption`` on one photo in a new process. The peak resident memory after each phase, and the disk
each part takes.

From the measured step counts and analytic FLOPs it **estimates** the times on Colab's GPUs (T4, L4, A100):
each phase takes the longer of its compute (FLOPs / (peak x an assumed utilisation), plus an assumed overhead
per training step) and of what the CPU must do for it, measured here (decoding JPEGs in the loader's one
thread; building a batch of cached features). The assumptions are arguments, and the report prints them.

    python -m tools.rehearse_photos                  # Flickr8k's size: 8,091 photos (about 10 minutes on 2 cores)
    python -m tools.rehearse_photos --images 400     # a fraction, the same path (a few minutes)

The JSON report (``--output``, default ``_build/rehearsal/photos-<images>.json``) names the machine; the book
quotes ``tools/measured/rehearse_photos.json``, the full-size report. Runs in a clone of the repository, from its
root: it uses the stand-in writers of the tests.
"""
import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from minicap.config import model_config, parse_overrides, profile
from minicap.data.datasets import load_data, scoring_split
from minicap.data.download import fetch
from minicap.data.features import list_feature_caches
from minicap.data.flickr8k import ARCHIVES, IMAGE_DIRECTORY, SPLIT_FILES, TOKEN_FILE
from minicap.data.images import load_image
from minicap.data.pipeline import CaptionBatches
from minicap.evaluate import evaluate_caption_set
from minicap.model import CaptionModel
from minicap.text import Tokenizer
from minicap.train import cached_backbone_features, feature_cache_dir, train
from minicap.vit_weights import weights_file_name
from tests.support.photo_stand_ins import COLOURS, SUBJECTS, serve, write_vit_b_weights
from tools.bench.device import PEAK_TFLOPS
from tools.bench.flops import decoder_flops, encoder_flops

ROOT = Path(__file__).resolve().parent.parent  # the clone: tools/rehearse_photos.py
FLICKR8K_IMAGES = 8091
FLICKR8K_SPLITS = {"train": 6000, "dev": 1000, "test": 1000}  # the other 91 photos are in no split list
CAPTIONS_PER_IMAGE = 5
# Flickr8k's photos are at most 500 pixels on their longest side: mostly landscape 500 x 333 / 375, portrait
# 333 / 375 x 500, a few square or panoramic ones. (width, height, share)
PHOTO_SIZES = [(500, 375, 0.34), (500, 333, 0.26), (375, 500, 0.14), (333, 500, 0.12), (500, 500, 0.04),
               (500, 400, 0.06), (500, 281, 0.04)]
# Caption lengths in words: Flickr8k's average about 11 words, from 1 to over 30.
CAPTION_WORDS = (11.0, 3.8, 1, 36)  # mean, standard deviation, shortest, longest
FILLER_VOCABULARY, FILLER_ZIPF = 20000, 1.3  # words drawn by Zipf's law: ~2,500 used 5+ times at full size

# Assumed, not measured (no GPU is lent to the machines that run this), as a range: the fraction of a GPU's
# 16-bit peak that the ViT-B/32's batches of 64 reach, the fraction the small decoder's training step reaches,
# the fixed cost of one training step (launching its kernels, the Python of Keras' loop), and whether the CPU's
# part (decoding JPEGs, building a batch) overlaps the GPU's or adds to it.
ASSUMED = {"optimistic": {"vit_utilisation": 0.35, "decoder_utilisation": 0.10, "step_overhead_ms": 4.0,
                          "cpu_overlaps": True},
           "pessimistic": {"vit_utilisation": 0.15, "decoder_utilisation": 0.03, "step_overhead_ms": 15.0,
                           "cpu_overlaps": False}}
GPUS = ("T4", "L4", "A100")


def machine():
    """The machine this ran on, as the report names it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30 if hasattr(os, "sysconf") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None,
            "gpu": None, "system": platform.platform(), "python": platform.python_version(),
            "keras": keras.__version__, "backend": keras.backend.backend()}


def peak_rss_mib():
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_bytes(path):
    """Bytes a file or folder takes on disk (allocated blocks: a sparse file counts what it holds)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# The stand-in archives
# ---------------------------------------------------------------------------------------------

def split_counts(images):
    """How many of ``images`` photos each split lists, in Flickr8k's proportions (6,000 / 1,000 / 1,000 of 8,091)."""
    counts = {split: max(1, round(images * count / FLICKR8K_IMAGES)) for split, count in FLICKR8K_SPLITS.items()}
    if sum(counts.values()) > images:
        raise ValueError(f"--images {images} is too few for three splits; give at least 4")
    return counts


def stand_in_photo(rng):
    """A JPEG (bytes) of a size Flickr8k has, textured so that it compresses about as a photo does, and its
    colour and subject."""
    sizes = [(w, h) for w, h, _ in PHOTO_SIZES]
    width, height = sizes[rng.choice(len(sizes), p=[share for _, _, share in PHOTO_SIZES])]
    colour, subject = rng.choice(list(COLOURS)), rng.choice(SUBJECTS)
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = (np.array(COLOURS[colour], np.float32)
              + 40 * np.sin(columns[..., None] / rng.uniform(8, 40) + rng.uniform(0, 6, 3))
              + 30 * np.cos(rows[..., None] / rng.uniform(8, 40))
              + rng.normal(0, 34, (height, width, 3)))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue(), colour, subject


def stand_in_captions(colour, subject, rng, filler):
    """Five captions of a photo: its colour and subject, then words drawn by Zipf's law, to Flickr8k's lengths."""
    mean, deviation, shortest, longest = CAPTION_WORDS
    captions = []
    for _ in range(CAPTIONS_PER_IMAGE):
        length = int(np.clip(round(rng.normal(mean, deviation)), shortest, longest))
        words = ["a", colour, subject] + [filler[i] for i in rng.zipf(FILLER_ZIPF, size=length) % len(filler)]
        captions.append(" ".join(words[:length]) + " .")
    return captions


def filler_words(count, seed=0):
    """``count`` distinct made-up words of two to four syllables."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables, size=rng.integers(2, 5))))
    return sorted(words)


def write_archives(folder, images, seed=0, log=print):
    """Flickr8k's two archives with ``images`` stand-in photos in ``folder``; return their SHA-256 digests (the
    form ``data_hashes`` takes) and what they hold."""
    import hashlib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng, filler = np.random.default_rng(seed), filler_words(FILLER_VOCABULARY, seed)
    counts, names, lines = split_counts(images), [], []
    start = time.perf_counter()
    with zipfile.ZipFile(folder / ARCHIVES["images"][0], "w", zipfile.ZIP_STORED) as archive:
        for index in range(images):
            data, colour, subject = stand_in_photo(rng)
            name = f"{1000000 + 7919 * index}_{index:05x}.jpg"
            archive.writestr(f"{IMAGE_DIRECTORY}/{name}", data)
            captions = stand_in_captions(colour, subject, rng, filler)
            lines += [f"{name}#{number}\t{caption}" for number, caption in enumerate(captions)]
            names.append(name)
            if (index + 1) % 1000 == 0:
                log(f"  {index + 1:,} of {images:,} photos written ({time.perf_counter() - start:.0f} s)")
    order = rng.permutation(images)
    listed, offset = {}, 0
    for split, count in counts.items():
        listed[split] = [names[i] for i in order[offset:offset + count]]
        offset += count
    with zipfile.ZipFile(folder / ARCHIVES["text"][0], "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(TOKEN_FILE, "\n".join(lines) + "\n")
        for split, file in SPLIT_FILES.items():
            archive.writestr(file, "\n".join(listed[split]) + "\n")
    digests = {key: "sha256:" + hashlib.sha256((folder / file).read_bytes()).hexdigest()
               for key, (file, _) in ARCHIVES.items()}
    return digests, {"images": images, "captions": len(lines), "splits": counts,
                     "archive_bytes": {key: (folder / file).stat().st_size for key, (file, _) in ARCHIVES.items()},
                     "seconds_to_write": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# The photos path, timed
# ---------------------------------------------------------------------------------------------

# `minicap caption ARGS` as the command runs it, then its own peak resident memory (VmHWM: the process's, from
# its start; getrusage's figure for a child would include the parent's memory at the fork).
CAPTION = """
import sys
from minicap.cli import main
code = main(["caption", *sys.argv[1:]])
with open("/proc/self/status") as status:
    print(next((line for line in status if line.startswith("VmHWM:")), ""), file=sys.stderr, end="")
sys.exit(code)
"""


class StepTimer(keras.callbacks.Callback):
    """The wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.seconds, self._start = [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


@contextlib.contextmanager
def phase(report, name, log):
    """Time the block as ``report["phases"][name]``, with the peak resident memory at its end."""
    log(f"-- {name}")
    entry = report["phases"].setdefault(name, {})
    start = time.perf_counter()
    yield entry
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["peak_rss_mib"] = round(peak_rss_mib())
    log(f"   {entry}")


def rehearse(images, work, epochs=1, seed=0, overrides=None, log=print):
    """Build the stand-ins for ``images`` photos in ``work`` and run the photos path; return the report."""
    work = Path(work)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(["python", "-m", "tools.rehearse_photos", *sys.argv[1:]]), "phases": {}}
    with phase(report, "stand-ins written (not part of the path)", log) as entry:
        digests, held = write_archives(work / "mirror", images, seed, log)
        vit_file = weights_file_name("vit-b32", "imagenet21k+imagenet2012")
        vit_digest = write_vit_b_weights(work / "mirror" / vit_file)
        entry.update(held)
    report["data"] = held
    os.environ["KERAS_HOME"] = str(work / "keras_home")  # empty: the ViT weights are downloaded
    with serve(work / "mirror") as url:
        os.environ["MINICAP_VIT_MIRROR"] = url
        # The profile as a reader runs it, but in float32: bfloat16 on a CPU without bfloat16 units is slower.
        settings = {"data_url": url, "data_hashes": digests, "backbone_weights_hash": vit_digest,
                    "data_dir": str(work / "data"), "epochs": epochs, "mixed_precision": False, "seed": seed,
                    **(overrides or {})}
        config = profile("photos", **settings)
        report["settings"] = {"profile": "photos", **{k: v for k, v in settings.items()
                                                      if k not in ("data_url", "data_hashes", "data_dir")}}
        downloads = work / "data" / "flickr8k" / "downloads"
        with phase(report, "download and verify", log) as entry:
            for key, (name, _) in ARCHIVES.items():
                fetch(url + name, downloads, file_hash=digests[key], progress=True)
            entry["bytes"] = disk_bytes(downloads)
        with phase(report, "extract and read the captions", log) as entry:
            train_split, val_split = load_data(config)
            entry.update(train=len(train_split), val=len(val_split),
                         extracted_bytes=disk_bytes(work / "data" / "flickr8k") - disk_bytes(downloads))
        tokenizer = Tokenizer.fit([c for refs in train_split.captions for c in refs], min_count=config.min_word_count)
        report["data"]["vocabulary"] = len(tokenizer)
        with phase(report, "model: ViT-B/32 weights downloaded and loaded", log) as entry:
            keras.utils.set_random_seed(seed)
            model = CaptionModel(model_config(config, len(tokenizer), tokenizer.pad_id))
            entry["parameters"] = model.count_params()
            entry["trainable_parameters"] = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
            entry["weights_bytes"] = disk_bytes(work / "keras_home" / "weights" / vit_file)
        with phase(report, "JPEG decoding alone (one thread, as the loader)", log) as entry:
            sample = train_split.paths[:min(300, len(train_split))]
            start = time.perf_counter()
            for path in sample:
                load_image(path, config.model.image_size)
            entry["images_per_second"] = round(len(sample) / (time.perf_counter() - start), 1)
        features = {}
        for split, data in (("train", train_split), ("val", val_split)):
            with phase(report, f"features: {split} photos through the frozen ViT-B/32", log) as entry:
                features[split] = cached_backbone_features(model, data.paths, config)
                entry.update(images=len(data), shape=list(features[split].shape))
            entry["images_per_second"] = round(len(data) / entry["seconds"], 2)
        caches = list_feature_caches(feature_cache_dir(config))
        report["feature_cache_bytes"] = sum(c["bytes"] for c in caches)
        with phase(report, "input pipeline: a batch of cached features", log) as entry:
            batches = CaptionBatches(train_split.paths, train_split.captions, tokenizer, config.model.max_length,
                                     config.batch_size, features=features["train"])
            count = min(50, len(batches))
            start = time.perf_counter()
            for index in range(count):
                batches[index]
            entry["ms_per_batch"] = round(1000 * (time.perf_counter() - start) / count, 2)
        del model, features, batches  # train() builds its own, and finds the features cached
        timer = StepTimer()
        run_dir = work / "run"
        with phase(report, "training (train(): the decoder on cached features)", log) as entry:
            result = train(config, run_dir, verbose=2, callbacks=[timer])
            history = result.history
            steady = timer.seconds[min(10, len(timer.seconds) - 1):]  # after compilation
            steps_per_epoch = len(timer.seconds) // epochs
            entry.update(steps=len(timer.seconds), steps_per_epoch=steps_per_epoch,
                         first_step_seconds=round(timer.seconds[0], 2),
                         median_step_ms=round(1000 * statistics.median(steady), 1),
                         epoch_seconds=[round(e["seconds"], 1) for e in history["epochs"]],
                         final_val_loss=round(history["epochs"][-1]["val_loss"], 3),
                         model_bytes=disk_bytes(result.model_path))
            entry["profile_epochs"] = profile("photos").epochs
            entry["profile_run_seconds_extrapolated"] = round(
                statistics.median(e["seconds"] for e in history["epochs"]) * entry["profile_epochs"])
        model, tokenizer = result.model, result.tokenizer
        split, test = scoring_split(config)
        for name, options in (("greedy", {}), ("beam 5", {"method": "beam", "beam_width": 5})):
            with phase(report, f"evaluation: {split} split, {name}", log) as entry:
                metrics, captions = evaluate_caption_set(model, tokenizer, test, **options)
                entry.update(images=len(test), **{key: round(value, 4) for key, value in metrics.items()})
            entry["images_per_second"] = round(len(test) / entry["seconds"], 2)
        with phase(report, "minicap caption: one photo, beam 5, a new process", log) as entry:
            photo = work / "photo.jpg"
            photo.write_bytes(stand_in_photo(np.random.default_rng(seed + 1))[0])
            environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
            completed = subprocess.run([sys.executable, "-c", CAPTION, str(photo), "--model", str(result.model_path),
                                        "--beam", "5"], capture_output=True, text=True, env=environment)
            if completed.returncode:
                raise RuntimeError(f"minicap caption failed: {completed.stderr[-2000:]}")
            entry["caption"] = completed.stdout.strip().splitlines()[-1].split("\t")[-1]
            peak = [line for line in completed.stderr.splitlines() if line.startswith("VmHWM:")]
            entry["peak_rss_mib_of_that_process"] = round(int(peak[-1].split()[1]) / 1024) if peak else None
    report["disk_bytes"] = {"archives": disk_bytes(downloads), "photos_extracted": report["phases"][
        "extract and read the captions"]["extracted_bytes"], "feature_cache": report["feature_cache_bytes"],
        "vit_weights": report["phases"]["model: ViT-B/32 weights downloaded and loaded"]["weights_bytes"],
        "run": disk_bytes(run_dir)}
    report["peak_rss_mib"] = round(peak_rss_mib())
    report["estimates"] = estimate(report)
    return report


# ---------------------------------------------------------------------------------------------
# Estimates for Colab's GPUs
# ---------------------------------------------------------------------------------------------

def estimate(report, assumed=ASSUMED):
    """Times on Colab's GPUs, estimated from the report's counts and this machine's CPU-side measurements, for
    each set of ``assumed`` figures (an optimistic and a pessimistic one)."""
    phases = report["phases"]
    settings = {k: v for k, v in report["settings"].items() if k != "profile"}
    config = profile("photos", **settings)
    features = sum(phases[f"features: {s} photos through the frozen ViT-B/32"]["images"] for s in ("train", "val"))
    training = phases["training (train(): the decoder on cached features)"]
    decode_rate = phases["JPEG decoding alone (one thread, as the loader)"]["images_per_second"]
    batch_seconds = phases["input pipeline: a batch of cached features"]["ms_per_batch"] / 1e3
    step_flops = 3 * decoder_flops(model_config(config, report["data"]["vocabulary"], 0)) * config.batch_size
    image_flops = encoder_flops(config.model)  # the ViT-B/32, its class token included
    epochs, steps = training["profile_epochs"], training["steps_per_epoch"]
    overheads = "/".join(f"{a['step_overhead_ms']:g}" for a in assumed.values())
    fractions = ", ".join(f"{a['vit_utilisation']:.0%}/{a['decoder_utilisation']:.0%}" for a in assumed.values())
    estimates = {"how": (f"a phase takes its GPU compute (the FLOPs counted: {image_flops / 1e9:.2f} GFLOP a photo "
                         f"through the ViT-B/32, {step_flops / 1e9:.1f} GFLOP a training step) at a fraction of the "
                         f"GPU's 16-bit peak ({fractions} for the ViT/the decoder), plus {overheads} ms a step, and "
                         f"the CPU's work measured in the rehearsal ({decode_rate:.0f} JPEGs decoded a second in the loader's "
                         f"thread, {batch_seconds * 1e3:.1f} ms to build a batch), overlapping or added; the "
                         f"fractions and the overheads are assumed, and the range spans the two sets"),
                 "assumed": assumed, "vit_gflops_per_image": round(image_flops / 1e9, 3),
                 "decoder_training_gflops_per_step": round(step_flops / 1e9, 2), "training_steps": epochs * steps,
                 "epochs": epochs}
    # GPU memory: the weights (float32), the gradients and Adam's two moments of the trainable ones, and the
    # largest activations of a batch of photos through the ViT (its MLP's hidden layer, kept twice: in and out).
    model_phase = phases["model: ViT-B/32 weights downloaded and loaded"]
    spec = config.model.encoder_spec()
    activations = 2 * config.batch_size * (spec.num_patches + 1) * spec.mlp_dim * 4
    estimates["gpu_memory_gib"] = round((4 * model_phase["parameters"] + 12 * model_phase["trainable_parameters"]
                                         + activations) / 2 ** 30, 2)
    combine = {True: max, False: lambda a, b: a + b}
    for gpu in GPUS:
        peak, entry = PEAK_TFLOPS[gpu] * 1e12, {"peak_tflops": PEAK_TFLOPS[gpu]}
        for case, a in assumed.items():
            both = combine[a["cpu_overlaps"]]
            feature_seconds = both(features * image_flops / (peak * a["vit_utilisation"]), features / decode_rate)
            step_seconds = both(step_flops / (peak * a["decoder_utilisation"]) + a["step_overhead_ms"] / 1e3,
                                batch_seconds)
            entry[case] = {"features_minutes": round(feature_seconds / 60, 3),
                           "epoch_minutes": round(steps * step_seconds / 60, 3),
                           "training_minutes": round(epochs * steps * step_seconds / 60, 3),
                           "total_minutes": round((feature_seconds + epochs * steps * step_seconds) / 60, 3)}
        estimates[gpu] = entry
    return estimates


def format_report(report):
    """The report as a few lines of text."""
    lines = [f"{report['data']['images']:,} photos, {report['data']['captions']:,} captions, vocabulary "
             f"{report['data']['vocabulary']:,}; on {report['machine']['cpu']} ({report['machine']['cores']} cores), "
             f"Keras {report['machine']['keras']} on {report['machine']['backend']}"]
    for name, entry in report["phases"].items():
        lines.append(f"  {name:58} {entry['seconds']:8.1f} s  peak RSS {entry['peak_rss_mib']:6,} MiB")
    lines.append("disk: " + ", ".join(f"{k} {v / 2 ** 20:,.0f} MiB" for k, v in report["disk_bytes"].items()))
    lines.append("estimates (not measured): " + report["estimates"]["how"])
    for gpu in GPUS:
        low, high = (report["estimates"][gpu][case] for case in ASSUMED)
        lines.append(f"  {gpu:5} " + ", ".join(
            f"{label} {low[key]:.1f}-{high[key]:.1f} min" for label, key in
            (("features", "features_minutes"), ("an epoch", "epoch_minutes"),
             (f"{report['estimates']['epochs']} epochs", "training_minutes"), ("in all", "total_minutes"))))
    return "\n".join(lines)


# The block the pages quote, between these markers (README.md, chapter 5, the photos notebook); a test checks
# that each page's block is quote(tools/measured/rehearse_photos.json).
QUOTE_START, QUOTE_END = "<!-- rehearse_photos: start -->", "<!-- rehearse_photos: end -->"
QUOTED_REPORT = ROOT / "tools" / "measured" / "rehearse_photos.json"
QUOTING_PAGES = ("README.md", "book/05_training.ipynb", "book/your_photos.ipynb")


def _minutes(seconds):
    return f"{seconds / 60:.1f} min"


def _range(estimates, gpu, key):
    """``low-high`` of an estimate (optimistic to pessimistic), in seconds under two minutes, else in minutes."""
    low, high = (estimates[gpu][case][key] for case in ASSUMED)
    if high < 2:
        return f"{60 * low:.0f}-{60 * high:.0f} s"
    return f"{low:.1f}-{high:.1f} min"


def quote(report):
    """What a page says of the rehearsal: a table of times (measured here, estimated on Colab's GPUs), what it
    needs (disk, memory), and where the figures come from. Markdown, between ``QUOTE_START`` and ``QUOTE_END``."""
    phases, estimates, data = report["phases"], report["estimates"], report["data"]
    train_, val_ = (phases[f"features: {s} photos through the frozen ViT-B/32"] for s in ("train", "val"))
    training = phases["training (train(): the decoder on cached features)"]
    machine = report["machine"]
    photos = train_["images"] + val_["images"]
    feature_seconds = train_["seconds"] + val_["seconds"]
    epoch_seconds = statistics.median(training["epoch_seconds"])
    steps = training["steps_per_epoch"]
    epochs = estimates["epochs"]
    rows = [
        (f"features of the {photos:,} training and validation photos (frozen ViT-B/32, once)",
         f"{_minutes(feature_seconds)} ({photos / feature_seconds:.0f} photos/s)",
         [_range(estimates, g, "features_minutes") for g in GPUS]),
        (f"one epoch: {steps:,} steps of {report['settings'].get('batch_size', 64)} captions",
         f"{_minutes(epoch_seconds)} ({training['median_step_ms'] / 1000:.2f} s a step)",
         [_range(estimates, g, "epoch_minutes") for g in GPUS]),
        (f"the profile's {epochs} epochs",
         f"{_minutes(training['profile_run_seconds_extrapolated'])} ({epochs} x the epoch)",
         [_range(estimates, g, "training_minutes") for g in GPUS]),
    ]
    disk = report["disk_bytes"]
    gib = lambda value: f"{value / 2 ** 30:.2f} GB"  # noqa: E731
    lines = [QUOTE_START,
             "| the photos profile at Flickr8k's size | measured: " + f"{machine['cores']}-core CPU | "
             + " | ".join(f"{g} (estimate)" for g in GPUS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in GPUS) + " |"]
    lines += [f"| {name} | {measured} | " + " | ".join(estimated) + " |" for name, measured, estimated in rows]
    lines += [
        "",
        f"What it needs: disk {gib(sum(disk.values()))} (the archives {gib(disk['archives'])}, the photos unpacked "
        f"{gib(disk['photos_extracted'])}, the feature cache {gib(disk['feature_cache'])}, the ViT weights "
        f"{gib(disk['vit_weights'])}, the run {gib(disk['run'])}); memory: at most "
        f"{report['peak_rss_mib'] / 1024:.1f} GB of RAM (the rehearsal's peak); on a GPU, about "
        f"{estimates['gpu_memory_gib']:.1f} GB (estimated: the weights, the decoder's gradients and Adam's moments, a "
        f"batch's largest activations; TensorFlow and JAX reserve most of the GPU's memory whatever the model needs). "
        f"Not in the table: downloading the archives and the weights ({gib(disk['archives'] + disk['vit_weights'])} "
        f"in the rehearsal; Flickr8k's own archives are about 1 GB) at your runtime's speed, and unpacking them "
        f"({phases['extract and read the captions']['seconds']:.0f} s in the rehearsal). Scoring the "
        f"{phases['evaluation: test split, greedy']['images']:,} test photos took "
        f"{_minutes(phases['evaluation: test split, greedy']['seconds'])} greedy and "
        f"{_minutes(phases['evaluation: test split, beam 5']['seconds'])} with beam search on the rehearsal's CPU.",
        "",
        f"Measured with `python -m tools.rehearse_photos` ({report['date'][:10]}; {data['images']:,} stand-in photos "
        f"and {data['captions']:,} captions, the real ViT-B/32 on stand-in weights; {machine['cpu']}, "
        f"{machine['cores']} cores, Keras {machine['keras']} on {machine['backend']}, float32). The GPU columns "
        f"are estimates, not measurements: {estimates['how']}.",
        QUOTE_END]
    return "\n".join(lines)


def update_pages(report, root=ROOT):
    """Write ``quote(report)`` between the markers of every page of ``QUOTING_PAGES``; return the pages changed."""
    block, changed = quote(report), []
    for page in QUOTING_PAGES:
        path = Path(root) / page
        text = path.read_text(encoding="utf-8")
        if page.endswith(".ipynb"):
            notebook = json.loads(text)
            for cell in notebook["cells"]:
                source = "".join(cell["source"])
                if cell["cell_type"] == "markdown" and QUOTE_START in source:
                    cell["source"] = _replace_block(source, block, page).splitlines(keepends=True)
            new = json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        else:
            new = _replace_block(text, block, page)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def quoted_blocks(text):
    """The rehearsal blocks a page's text (a notebook's markdown: its JSON decoded) holds."""
    blocks, start = [], text.find(QUOTE_START)
    while start >= 0:
        end = text.index(QUOTE_END, start) + len(QUOTE_END)
        blocks.append(text[start:end])
        start = text.find(QUOTE_START, end)
    return blocks


def _replace_block(text, block, page):
    if QUOTE_START not in text or QUOTE_END not in text:
        raise ValueError(f"{page} has no {QUOTE_START} ... {QUOTE_END} block to write the rehearsal's figures into")
    start, end = text.index(QUOTE_START), text.index(QUOTE_END) + len(QUOTE_END)
    return text[:start] + block + text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.rehearse_photos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=FLICKR8K_IMAGES,
                        help=f"photos in the stand-in archives (default {FLICKR8K_IMAGES:,}, Flickr8k's)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs trained and timed (the profile's are estimated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a setting of the profile")
    parser.add_argument("--work", help="folder for the stand-ins and the run (default: a temporary one, removed)")
    parser.add_argument("--output", help="the JSON report (default _build/rehearsal/photos-<images>.json)")
    parser.add_argument("--update-pages", metavar="REPORT", nargs="?", const=str(QUOTED_REPORT),
                        help="rehearse nothing: write REPORT's figures (default the book's, "
                             "tools/measured/rehearse_photos.json) into the pages that quote them")
    args = parser.parse_args(argv)
    if args.update_pages:
        report = json.loads(Path(args.update_pages).read_text())
        changed = update_pages(report)
        print(quote(report))
        print("updated: " + (", ".join(changed) or "nothing (the pages already say this)"))
        return 0
    if args.images < 4:
        parser.error(f"--images must be at least 4 (three splits), got {args.images}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rehearse-photos-"))
    try:
        report = rehearse(args.images, work, args.epochs, args.seed, parse_overrides(args.set))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    output = Path(args.output or ROOT / "_build" / "rehearsal" / f"photos-{args.images}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(format_report(report))
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
