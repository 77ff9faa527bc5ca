"""``train``: one call (or ``minicap train``) from a profile to a trained, saved captioning model.

A profile (:class:`TrainConfig`) holds the model's settings (a nested ``CaptionConfig``) and the
training's (data set, batches, schedule, seed). ``quick`` trains a small ViT from scratch on the CPU in
minutes on the built-in shapes scenes; ``photos`` is the article's model: a pretrained ViT-B/32, frozen,
its patch features computed once and cached, a Transformer decoder trained on Flickr8k (or COCO, or a
folder of the reader's own captioned images) on a GPU; ``gpu`` trains a larger shapes model. ``train``
resumes where an interrupted run of the same configuration stopped: run it again with the same ``run_dir``.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import keras

from minicap.checkpoint import Checkpointer, save_model_atomic, write_json_atomic
from minicap.distribute import data_parallel, predictor
from minicap.model import CaptionConfig
from minicap.training import EpochLog, History, compile_model

BUILT_IN_DATASETS = ("shapes", "flickr8k", "coco")


def _model(**values):
    """A profile's model settings: a CaptionConfig whose vocabulary size the tokenizer decides."""
    return dataclasses.field(default_factory=lambda: CaptionConfig(vocab_size=None, **values))


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. Two runs with equal configs train the same model."""

    model: CaptionConfig = _model()  # the model's sizes (image_size, model_dim, backbone, ...), one source
    profile: str = ""                # the profile these settings start from ("quick", "photos", "gpu"; "" by hand)
    # "shapes" (built in), "flickr8k" or "coco" (downloaded on demand), or the path of a folder (or CSV
    # file) of the reader's own captioned images: captions.csv with the header image,caption
    dataset: str = "shapes"
    data_dir: str = ""               # where downloads and feature caches go ("" = $MINICAP_DATA or ~/.keras/datasets/minicap)
    data_url: str = ""               # a mirror of the data set's archives, e.g. file:///data/flickr8k/ ("" = official hosts)
    data_hashes: dict = dataclasses.field(default_factory=dict)  # digests replacing the published ones (only if given)
    num_train: int = 6000            # shapes: scenes in the training split
    num_val: int = 200               # shapes: scenes in the validation split
    max_objects: int = 2             # shapes: most objects per scene (1-3)
    min_word_count: int = 1          # rarer words of the training captions become [UNK]
    batch_size: int = 64             # captions per step
    epochs: int = 8                  # passes over the training captions (every reference of every image)
    warmup_steps: int = 300          # learning-rate warm-up (TransformerSchedule)
    lr_scale: float = 1.0            # multiplies the schedule's learning rate
    label_smoothing: float = 0.0     # ε of the masked cross-entropy
    weight_decay: float = 0.0        # AdamW's decoupled weight decay of the weight matrices (0: Adam)
    word_dropout: float = 0.0        # chance of replacing each decoder input word by [UNK] (training only)
    cache_features: bool = True      # frozen pretrained backbone: compute its features once, keep them on disk
    mixed_precision: bool = False    # bfloat16 (float16 on GPUs older than Ampere), float32 weights
    jit_compile: str = "auto"        # XLA: "auto" (TensorFlow, JAX: on; PyTorch: off; see JIT_BY_BACKEND), "on", "off"
    run_eagerly: bool = False        # no graph, no XLA: each step op by op (debugging: print and pdb work in layers)
    devices: int = 0                 # data parallel over this many devices (0: every local GPU/TPU, else 1)
    checkpoint_every: int = 200      # steps between checkpoints (also one at each epoch's end)
    seed: int = 0                    # seeds data order, initial weights and dropout

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = CaptionConfig.from_dict({"vocab_size": None, **self.model})
        for name in ("epochs", "batch_size", "num_train", "num_val", "min_word_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.jit_compile not in ("auto", "on", "off"):
            raise ValueError(f"jit_compile must be 'auto', 'on' or 'off', got {self.jit_compile!r}")
        for name in ("run_eagerly", "cache_features", "mixed_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.data_hashes, dict):
            raise ValueError(f"data_hashes must be a dict of archive name to digest, got {self.data_hashes!r}")

    @property
    def uses_feature_cache(self):
        """True when training runs on cached features: a pretrained backbone, frozen, with caching on."""
        return self.model.pretrained and self.model.freeze_backbone and self.cache_features

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A TrainConfig from a (nested) dict, as ``train_config.json`` stores it; unknown names are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **overrides):
        """A copy with ``overrides`` applied: training settings by name, model settings by their
        ``CaptionConfig`` name (``model_dim=256``) or as ``model.model_dim``. Unknown names are an error."""
        train_fields = {field.name for field in dataclasses.fields(self)} - {"model"}
        model_fields = {field.name for field in dataclasses.fields(CaptionConfig)} - {"vocab_size", "pad_id"}
        train_values, model_values = {}, {}
        for name, value in overrides.items():
            bare = name[len("model."):] if name.startswith("model.") else name
            if name in train_fields:
                train_values[name] = value
            elif bare in model_fields:
                model_values[bare] = value
            else:
                raise ValueError(f"unknown setting {name!r}; training settings: {sorted(train_fields)}; "
                                 f"model settings: {sorted(model_fields)}")
        model = dataclasses.replace(self.model, **model_values) if model_values else self.model
        return dataclasses.replace(self, model=model, **train_values)


PROFILES = {
    # A small Vision Transformer from scratch, with nothing in it that only fits the shapes world: 72-pixel
    # images in 12-pixel patches (a 6 x 6 grid) embedded by a convolutional stem (Xiao et al. 2021: three 3 x 3
    # convolutions of strides 2, 2, 3 instead of one linear projection of the raw pixels), learned positions,
    # 2 encoder and 2 decoder layers of width 64. Measured with tests/bench_seeds.py (chapter 5 shows what
    # mattered): the linear stem cannot recognise the jittered shapes on tinted backgrounds (58% faithful, 63
    # wrong objects in 300 captions; the conv stem: 9), and heads 8 wide never learn the relations ("left
    # of"), 2 heads of 32 do. The encoder's output positions (DETR) keep the positions the relations need. A
    # warm-up of 1,200 steps (peak rate 3.6e-3, half of 300 steps' peak) and 8 epochs (3,000 steps): with 300 steps
    # and 6 epochs, seed 3 never learned the relations (64.7%); with these, seeds 0-4 write 94-96% true captions.
    "quick": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=16, image_size=72, patch_size=12, patch_stem="conv",
                            model_dim=64, num_heads=2, encoder_layers=2, mlp_dim=256, dropout=0.0,
                            output_positions=True),
        epochs=8, warmup_steps=1200, label_smoothing=0.3),
    # The composition study of the book's appendix, not a general encoder: a patch encoder with a prior that only
    # fits this world (flat-coloured shapes on a plain background), which lets a small model name colour-and-shape
    # pairs it never saw. 72-pixel images in 24-pixel patches: the 3 x 3 patches are the scenes' grid cells. The
    # colour-shape patch encoder, with a hidden layer that recognises shapes in the colour-blind foreground map;
    # positions added to the encoder's output for the relations ("left of"); 8 heads and 2 encoder layers, which
    # learned the relations for more seeds than 4 heads and 1 layer did; strong label smoothing (0.1 lost the
    # relations for a seed). Measured with tests/bench_seeds.py (300 scenes per split), faithful captions for
    # seeds 0-4 after 6 epochs: 99.0 / 99.7 / 99.3 / 99.7 / 69.0% on new scenes, 86.0 / 68.0 / 84.3 / 88.7 / 62.3%
    # on held-out ones (the appendix's table). 12 epochs took twice as long for about the same spread (86.7 / 65.7 /
    # 86.3 / 93.7 / 64.0% held-out; seed 4 87.3% on new scenes), and a 1,200-step warm-up over 12 epochs rescued
    # seed 4 (98.7 / 80.0%) but not seed 0 (46.0%).
    "composition": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=16, image_size=72, patch_size=24, model_dim=64, num_heads=8,
                            encoder_layers=2, mlp_dim=256, dropout=0.0, patch_stem="colour-shape",
                            stem_hidden_dim=128, output_positions=True),
        epochs=6, label_smoothing=0.3),
    # The article's model: ViT-B/32 pretrained on ImageNet-21k and fine-tuned on ImageNet-2012, frozen (features
    # cached), at 224 pixels (7 x 7 = 49 patch tokens of width 768), projected to the decoder's width 256; a
    # decoder of 4 heads. Flickr8k's 6,000 training photos are little data for a decoder trained from scratch,
    # hence 2 layers and dropout 0.3 (not the paper's 6 layers): a deeper or less regularised decoder would
    # overfit them (the validation loss of every epoch, in history.json and chapter 5's plot, shows it). Every
    # epoch shows all 5 captions of every image (469 steps of 64); 12 epochs with a 1,000-step warm-up peak at lr
    # 1e-3 (lr_scale 0.5). Rare words (fewer than 5 uses) become [UNK]. Reasoned, not measured: no machine of this
    # project reaches Flickr8k.
    "photos": TrainConfig(
        model=CaptionConfig(vocab_size=None, backbone="vit-b32", image_size=224, max_length=24, model_dim=256,
                            num_heads=4, decoder_layers=2, mlp_dim=1024, dropout=0.3),
        dataset="flickr8k", min_word_count=5, batch_size=64, epochs=12, warmup_steps=1000, lr_scale=0.5,
        label_smoothing=0.1, checkpoint_every=500, mixed_precision=True),
    "gpu": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=24, image_size=128, patch_size=16, model_dim=256, num_heads=8,
                            encoder_layers=4, decoder_layers=3, mlp_dim=1024, patch_stem="colour-shape",
                            stem_hidden_dim=256, output_positions=True),
        num_train=40000, num_val=1000, max_objects=3, batch_size=128, epochs=20, warmup_steps=1000,
        mixed_precision=True, jit_compile="on"),
}


def profile(name, **overrides):
    """The named profile's TrainConfig with ``overrides`` applied (see :meth:`TrainConfig.replace`)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return dataclasses.replace(PROFILES[name], profile=name).replace(**overrides)


def load_data(config):
    """The training and validation data of ``config``: ``(train, val)`` (see :func:`load_split`)."""
    return load_split(config, "train"), load_split(config, "val")


def load_split(config, split):
    """One split (``"train"`` or ``"val"``; ``"test"`` for the real data sets) of ``config``'s data set.

    Shapes scenes (``ShapesData``, images in memory) or, for photos, a ``CaptionSet`` of image files
    read from disk a batch at a time: Flickr8k's train/dev lists, COCO's Karpathy train (with restval)
    / val, or a folder's train/val split.
    """
    image_size = config.model.image_size
    if config.dataset == "shapes":
        from minicap.data.shapes import make_shapes

        if split not in ("train", "val"):
            raise ValueError(f"shapes runs have a train and a val split, not {split!r}")
        count, seed = (config.num_train, config.seed) if split == "train" else (config.num_val, config.seed + 1)
        return make_shapes(count, split=split, seed=seed, image_size=image_size, max_objects=config.max_objects)
    if config.dataset in BUILT_IN_DATASETS:
        from minicap.data import real_datasets

        return real_datasets.load_split(config, split)
    from minicap.data.folder import load_caption_folder

    return load_caption_folder(config.dataset, split, image_size=image_size)


def model_config(config, vocab_size, pad_id):
    """The CaptionConfig that ``config`` describes, for a vocabulary of ``vocab_size`` words."""
    return dataclasses.replace(config.model, vocab_size=vocab_size, pad_id=pad_id)


def _set_precision(config):
    """Set the global dtype policy of ``config.mixed_precision``; return its name."""
    policy = "mixed_" + mixed_precision_dtype() if config.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def mixed_precision_dtype():
    """"bfloat16" unless the GPU is older than Ampere (compute capability < 8, e.g. Colab's T4),
    which has fast float16 but no fast bfloat16. CPUs and TPUs get bfloat16."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            capability = getattr(jax.devices()[0], "compute_capability", None)
            return "float16" if capability and float(capability) < 8 else "bfloat16"
        if backend == "tensorflow":
            import tensorflow as tf

            for gpu in tf.config.list_physical_devices("GPU"):
                if tf.config.experimental.get_device_details(gpu).get("compute_capability", (8, 0)) < (8, 0):
                    return "float16"
    except (RuntimeError, ValueError):  # no usable accelerator: CPU
        pass
    return "bfloat16"


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the trained model and everything needed to use it."""

    model: keras.Model
    tokenizer: object
    history: dict
    run_dir: Path
    resumed_from_step: int  # 0 for a fresh run
    config: "TrainConfig" = None  # the settings the run was trained with (its train_config.json)

    @property
    def model_path(self):
        return self.run_dir / "model.keras"


# Settings that choose where a run trains without changing what it computes (the same global batch on
# 1 or N devices); a resume need not match them. history.json records each run segment's devices.
PLACEMENT_SETTINGS = ("devices",)


def _check_run_dir(run_dir, config, overwrite):
    """Refuse to clobber a finished run, or to resume a run of different settings."""
    if (run_dir / "model.keras").exists():
        if not overwrite:
            raise FileExistsError(
                f"{run_dir / 'model.keras'} already holds a trained model; choose another run directory, "
                f"or pass overwrite=True (minicap train --overwrite) to train again and replace it")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    saved = run_dir / "train_config.json"
    if saved.exists() and (run_dir / "checkpoints" / "state.json").exists():
        # Through TrainConfig, so that a setting added since the run started counts with its default.
        previous = _flat(TrainConfig.from_dict(json.loads(saved.read_text())).to_dict())
        current = _flat(config.to_dict())
        for name in PLACEMENT_SETTINGS:  # where a run trains, not what: a resume may use other devices
            previous.pop(name, None), current.pop(name, None)
        if previous != current:
            changed = sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))
            raise ValueError(
                f"{run_dir} holds an interrupted run with different settings ({', '.join(changed)}); resume it "
                f"with the same settings, or use another run directory")


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
    from minicap.data.download import default_cache_dir

    return Path(config.data_dir or default_cache_dir()) / "features"


def cached_backbone_features(model, paths, config, progress=True):
    """The frozen pretrained backbone's patch features of the image files ``paths``, computed once and
    kept on disk (float16, memory-mapped, ``(len(paths), num_patches, feature_dim)``): see
    :mod:`minicap.data.features`. The cache is keyed by the images, the image size and the backbone's
    actual weights, so other settings never read it."""
    from minicap.data.features import cached_features, fingerprint_variables

    inputs = keras.Input((model.config.image_size, model.config.image_size, 3))
    extractor = keras.Model(inputs, model.encoder(inputs, training=False), name="feature_extractor")
    describe = {"backbone": model.config.backbone, "weights": fingerprint_variables(model.encoder.weights),
                "dtype": "float16"}
    return cached_features(predictor(extractor), paths, model.config.image_size, feature_cache_dir(config),
                           describe, batch_size=config.batch_size, progress=progress)


def make_batches(config, model, split, tokenizer, training, progress=True):
    """The ``CaptionBatches`` of one split: images (shapes scenes in memory, photos read from disk), or
    the cached backbone features of the photos when the backbone is pretrained and frozen."""
    from minicap.data.pipeline import CaptionBatches

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
        run_dir: the run directory (see the module docstring of :mod:`minicap.training`).
        overwrite: replace a finished run's model instead of refusing.
        verbose: 1 or "auto": Keras' progress bar; 2: one line per epoch (``EpochLog``); 0: silent.
        callbacks: more Keras callbacks.

    Returns:
        a :class:`TrainResult`.
    """
    from minicap.model import CaptionModel
    from minicap.text import Tokenizer

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
    from minicap.model import load_captioner

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
    """Load the finished run in ``run_dir`` if there is one (and ``retrain`` is False), else train it.

    Chapter 6 uses this: it reads chapter 5's model, or trains the same one if it is missing
    (e.g. when chapter 6 is opened alone on Colab). The result's ``config`` is the run's own settings
    (its ``train_config.json``), not ``config``: a finished run of another profile than ``config``'s
    is an error that names both.
    """
    config = profile(config) if isinstance(config, str) else config
    if not retrain and (Path(run_dir) / "model.keras").exists():
        saved = run_config(run_dir)
        if config.profile and saved.profile and saved.profile != config.profile:
            raise ValueError(f"{run_dir} holds a run of the {saved.profile!r} profile, not of {config.profile!r}: "
                             f"choose PROFILE = {saved.profile!r}, or another run directory")
        model, tokenizer = load_run(run_dir)
        history = json.loads((Path(run_dir) / "history.json").read_text())
        return TrainResult(model, tokenizer, history, Path(run_dir), 0, saved)
    return train(config, run_dir, overwrite=retrain, verbose=verbose)
