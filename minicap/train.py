"""``train``: one call (or ``minicap train``) from a profile to a trained, saved captioning model.

``train(config, run_dir)`` compiles a ``CaptionModel`` with chapter 5's recipe (:mod:`minicap.training`) and
calls ``fit`` on every batch of every epoch, plus what a long run needs: a line per epoch (or a progress
bar), atomic checkpoints of the weights and the optimizer, resuming batch for batch where an interrupted run
of the same settings stopped (run it again with the same ``run_dir``), a fixed seed, data parallel training
on every local GPU, mixed precision, and a JSON history. A frozen pretrained backbone's features are
computed once and cached first. The settings are a :class:`minicap.config.TrainConfig` or a profile name.
The run directory it writes::

    run_dir/train_config.json   what was asked for (the resume check compares it)
    run_dir/config.json         the model's CaptionConfig
    run_dir/tokenizer.json      the vocabulary
    run_dir/checkpoints/        state.json + the latest weights (with the optimizer's state)
    run_dir/history.json        loss, accuracy and learning rate per step and per epoch; the devices of
                                each run segment (a start or a resume), and of the latest at the top
    run_dir/model.keras         the trained model, written once training has finished
"""
import dataclasses
import json
import shutil
from pathlib import Path

import keras

from minicap.checkpoint import Checkpointer, save_model_atomic, write_json_atomic
from minicap.config import TrainConfig, model_config, profile
from minicap.data.datasets import load_data
from minicap.data.download import default_cache_dir
from minicap.data.features import cached_features, fingerprint_variables
from minicap.data.pipeline import CaptionBatches
from minicap.distribute import data_parallel, mixed_precision_dtype, predictor
from minicap.model import CaptionModel, load_captioner
from minicap.text import Tokenizer
from minicap.training import EpochLog, History, compile_model

__all__ = ["train", "train_or_load", "TrainResult", "load_run", "run_config", "make_batches",
           "cached_backbone_features", "feature_cache_dir", "changed_settings"]


def _set_precision(config):
    """Set the global dtype policy of ``config.mixed_precision``; return its name."""
    policy = "mixed_" + mixed_precision_dtype() if config.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the trained model and everything needed to use it."""

    model: keras.Model
    tokenizer: object
    history: dict
    run_dir: Path
    resumed_from_step: int  # 0 for a fresh run
    config: "TrainConfig" = None  # the settings the run was trained with (its train_config.json)
    loaded: bool = False  # True: a finished run loaded from run_dir, nothing trained

    @property
    def training_seconds(self):
        """The time the run's epochs took (their sum over every run segment, resumes included)."""
        return sum(epoch.get("seconds", 0.0) for epoch in self.history.get("epochs", []))

    @property
    def model_path(self):
        """The run's saved model, ``run_dir / "model.keras"``."""
        return self.run_dir / "model.keras"


# Settings that choose where a run trains and keeps its data without changing what it computes (the same global
# batch on 1 or N devices; the same verified archives from another folder or mirror); a resumed or reloaded run
# need not match them. history.json records each run segment's devices.
PLACEMENT_SETTINGS = ("devices", "data_dir", "extract_dir", "data_url")


def _check_run_dir(run_dir, config, overwrite):
    """Refuse to clobber a finished run, or to resume a run of different settings."""
    if (run_dir / "model.keras").exists():
        if not overwrite:
            raise FileExistsError(
                f"{run_dir / 'model.keras'} already holds a trained model; choose another run directory, "
                f"or pass overwrite=True (minicap train --overwrite) to train again and replace it")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if (run_dir / "train_config.json").exists() and (run_dir / "checkpoints" / "state.json").exists():
        changed = changed_settings(run_config(run_dir), config)
        if changed:
            raise ValueError(
                f"{run_dir} holds an interrupted run with different settings {_describe_changes(changed)}; "
                f"resume it with the same settings, or use another run directory")


def changed_settings(saved, config):
    """``{name: (saved value, value in config)}`` of the settings in which two TrainConfigs differ, by their
    flat names (``model.model_dim``), leaving out ``PLACEMENT_SETTINGS`` and the model settings that neither
    run's encoder reads (a scratch encoder's ignores the pretrained weights, and the other way round)."""
    # Through TrainConfig, so that a setting added since a run started counts with its default.
    previous, current = _flat(saved.to_dict()), _flat(config.to_dict())
    ignored = set(PLACEMENT_SETTINGS) | {f"model.{name}" for name in
                                         set(saved.model.ignored_fields()) & set(config.model.ignored_fields())}
    names = sorted(previous.keys() | current.keys())
    return {name: (previous.get(name), current.get(name)) for name in names
            if name not in ignored and previous.get(name) != current.get(name)}


def _describe_changes(changed):
    """``(names); the run has a=1, these settings a=2`` for the differences of :func:`changed_settings`."""
    run = ", ".join(f"{name}={old!r}" for name, (old, _) in changed.items())
    now = ", ".join(f"{name}={new!r}" for name, (_, new) in changed.items())
    return f"({', '.join(changed)}); the run has {run}, these settings {now}"


def _flat(values, prefix=""):
    """``{"model": {"model_dim": 64}}`` as ``{"model.model_dim": 64}``, to name what differs."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key == "model":
            flat.update(_flat(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def feature_cache_dir(config):
    """Where the frozen backbone's features of ``config``'s data set are cached."""
    return Path(config.data_dir or default_cache_dir()) / "features"


def cached_backbone_features(model, paths, config, progress=True):
    """The frozen pretrained backbone's patch features of the image files ``paths``, computed once and
    kept on disk (float16, memory-mapped, ``(len(paths), num_patches, feature_dim)``): see
    :mod:`minicap.data.features`. The cache is keyed by the images, the image size and the backbone's
    actual weights, so other settings never read it."""
    inputs = keras.Input((model.config.image_size, model.config.image_size, 3))
    extractor = keras.Model(inputs, model.encoder(inputs, training=False), name="feature_extractor")
    describe = {"backbone": model.config.backbone, "weights": fingerprint_variables(model.encoder.weights),
                "dtype": "float16"}
    return cached_features(predictor(extractor), paths, model.config.image_size, feature_cache_dir(config),
                           describe, batch_size=config.batch_size, progress=progress)


def make_batches(config, model, split, tokenizer, training, progress=True):
    """The ``CaptionBatches`` of one split: images (shapes scenes in memory, photos read from disk), or
    the cached backbone features of the photos when the backbone is pretrained and frozen."""
    options = dict(shuffle=training, seed=config.seed, word_dropout=config.word_dropout if training else 0.0)
    common = (split.captions, tokenizer, config.model.max_length, config.batch_size)
    if config.uses_feature_cache and hasattr(split, "paths"):
        features = cached_backbone_features(model, split.paths, config, progress=progress)
        return CaptionBatches(split.paths, *common, features=features, **options)
    return CaptionBatches(split.images, *common, **options)


def train(config, run_dir, overwrite=False, verbose="auto", callbacks=()):
    """Train a captioning model as ``config`` says, in ``run_dir``; resume if it was interrupted.

    Args:
        config: a :class:`TrainConfig`, or a profile name (``"quick"``, ``"photos"``, ``"gpu"``).
        run_dir: the run directory (see this module's docstring).
        overwrite: replace a finished run's model instead of refusing.
        verbose: 1 or "auto": Keras' progress bar; 2: one line per epoch (``EpochLog``); 0: silent.
        callbacks: more Keras callbacks.

    Returns:
        a :class:`TrainResult`.
    """
    config = profile(config) if isinstance(config, str) else config
    run_dir = Path(run_dir)
    placement = data_parallel(config.devices, config.batch_size)  # before anything is written
    _check_run_dir(run_dir, config, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "train_config.json", config.to_dict())

    keras.utils.set_random_seed(config.seed)
    policy = _set_precision(config)
    train_split, val_split = load_data(config)
    tokenizer = Tokenizer.fit([c for refs in train_split.captions for c in refs], min_count=config.min_word_count)
    print(f"training on {placement}")
    # The model's variables, its optimizer's, the feature pass and fit all live on the placement's
    # devices: one, or several holding a copy each, every batch split between them (minicap.distribute).
    with placement.scope():
        model = CaptionModel(model_config(config, len(tokenizer), tokenizer.pad_id))
        compile_model(model, tokenizer.pad_id, config.warmup_steps, config.lr_scale, config.label_smoothing,
                      jit_compile={"auto": "auto", "on": True, "off": False}[config.jit_compile],
                      weight_decay=config.weight_decay, run_eagerly=config.run_eagerly)
        progress = verbose not in (0, "0")
        batches = make_batches(config, model, train_split, tokenizer, training=True, progress=progress)
        val_batches = make_batches(config, model, val_split, tokenizer, training=False, progress=progress)

        history = History(run_dir / "history.json")
        checkpointer = Checkpointer(run_dir / "checkpoints", config.checkpoint_every,
                                    extra=lambda: {"history": history.record})
        line_per_epoch = verbose in (2, "2")
        all_callbacks = [history, checkpointer, *([EpochLog(config.epochs)] if line_per_epoch else []), *callbacks]
        state = checkpointer.restore(model)
        epoch, skip, resumed = 0, 0, 0
        if state:
            history.record = state["history"]
            epoch, skip, resumed = state["epoch"], state["step_in_epoch"], state["step"]
            if skip >= len(batches):  # saved after an epoch's last step, before its end: the epoch is done
                epoch, skip = epoch + 1, 0
            print(f"resuming {run_dir} from step {resumed} (epoch {epoch + 1}, batch {skip})")
        # One entry per run segment (a fresh start or a resume): the devices it trained on, from which step;
        # "devices" at the top: those of the latest segment, the ones that finished the run.
        history.record.setdefault("segments", []).append(
            {"from_step": resumed, "devices": len(placement), "device_names": placement.devices})
        history.record["devices"] = len(placement)
        # [start-train-loop]
        # One fit per epoch over a fixed view of that epoch's batches: the order depends only on the seed
        # and the epoch number, so a resumed run sees exactly the batches an uninterrupted one would.
        # (fit's own shuffle is off: it would reorder the batches at random.)
        fit = dict(validation_data=placement.batches(val_batches, tokenizer.pad_id), callbacks=all_callbacks,
                   verbose=0 if line_per_epoch else verbose, shuffle=False)
        for epoch in range(epoch, config.epochs):
            checkpointer.batch_offset = skip
            view = placement.batches(_EpochView(batches, epoch, skip), tokenizer.pad_id)
            model.fit(view, epochs=epoch + 1, initial_epoch=epoch, **fit)
            skip = 0
        # [end-train-loop]
        checkpointer.batch_offset = 0

    tokenizer.save(run_dir / "tokenizer.json")
    model.config.save(run_dir / "config.json")
    history.save()
    save_model_atomic(model, run_dir / "model.keras")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    keras.mixed_precision.set_global_policy("float32")  # leave the process as it was
    return TrainResult(model, tokenizer, history.record, run_dir, resumed, config)


class _EpochView(keras.utils.PyDataset):
    """The batches of one epoch, from batch ``start`` on, in that epoch's order.

    ``fit`` calls a data set's ``on_epoch_end`` when it likes (even before the first batch); this
    view ignores it, so the order is always the one of ``epoch``.
    """

    def __init__(self, batches, epoch, start=0):
        super().__init__()
        batches.set_epoch(epoch)
        self.batches, self.start = batches, start

    def __len__(self):
        return len(self.batches) - self.start

    def __getitem__(self, index):
        return self.batches[self.start + index]


def load_run(run_dir):
    """The trained model and tokenizer of a finished run: ``(model, tokenizer)``."""
    path = Path(run_dir) / "model.keras"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train first (minicap train -o {run_dir})")
    return load_captioner(path)


def run_config(run_dir):
    """The :class:`TrainConfig` a run was trained with, read from its ``train_config.json``."""
    path = Path(run_dir) / "train_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a minicap run directory")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def train_or_load(config, run_dir, retrain=False, verbose="auto"):
    """Load the finished run in ``run_dir`` if there is one (and ``retrain`` is False), else train it (or resume it,
    where an interrupted run of the same settings waits).

    Chapters 5 and 6 and the photos notebook use this: each finds the run another one trained (on Colab, on Google
    Drive) and never trains it again unless asked (``retrain=True``, which trains anew and replaces it). The
    result's ``config`` is the run's own record (its ``train_config.json``). A finished run of other settings than
    ``config`` is an error that names each difference (settings of where the data lives, ``PLACEMENT_SETTINGS``,
    may differ).
    """
    config = profile(config) if isinstance(config, str) else config
    if not retrain and (Path(run_dir) / "model.keras").exists():
        saved = run_config(run_dir)
        if config.profile and saved.profile and saved.profile != config.profile:
            raise ValueError(f"{run_dir} holds a run of the {saved.profile!r} profile, not of {config.profile!r}: "
                             f"choose PROFILE = {saved.profile!r}, or another run directory")
        changed = changed_settings(saved, config)
        if changed:
            raise ValueError(f"{run_dir} holds a finished run of other settings {_describe_changes(changed)}: use "
                             f"the run's settings to load it, retrain=True (RETRAIN = True) to train it again with "
                             f"these, or another run directory")
        model, tokenizer = load_run(run_dir)
        history = json.loads((Path(run_dir) / "history.json").read_text())
        if verbose not in (0, "0"):
            print(f"loaded the finished run in {run_dir} ({history['step'][-1]:,} steps): nothing to train")
        return TrainResult(model, tokenizer, history, Path(run_dir), 0, saved, loaded=True)
    return train(config, run_dir, overwrite=retrain, verbose=verbose)
