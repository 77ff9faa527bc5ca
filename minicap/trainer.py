"""``train``: one call (or ``minicap train``) from a profile to a trained, saved captioning model.

Profiles bundle every size and setting of a run (:class:`TrainConfig`): ``quick`` trains on a CPU in
minutes on the shapes scenes; ``gpu`` trains a larger model longer. ``train`` resumes where an
interrupted run of the same configuration stopped: run it again with the same ``run_dir``.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import keras

from minicap.checkpoint import Checkpointer, save_model_atomic, write_json_atomic
from minicap.training import History, compile_model


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. Two runs with equal configs train the same model."""

    dataset: str = "shapes"          # "shapes" (built in); "flickr8k" or "coco" (downloaded, for GPUs)
    data_dir: str = ""               # cache directory of the real data sets ("" = ~/.keras/datasets)
    num_train: int = 6000            # shapes scenes in the training split
    num_val: int = 200               # shapes scenes in the validation split
    image_size: int = 64             # images are resized to image_size × image_size
    max_objects: int = 2             # shapes: most objects per scene (1-3)
    max_length: int = 16             # decoder positions: [START] + words (+ [END] as the last target)
    patch_size: int = 8              # encoder patches (image_size must be a multiple)
    model_dim: int = 128             # width of the encoder and the decoder
    num_heads: int = 4               # attention heads
    encoder_layers: int = 2          # depth of the from-scratch ViT encoder
    decoder_layers: int = 2          # depth of the decoder
    mlp_dim: int = 256               # hidden width of the feed-forward blocks
    dropout: float = 0.1             # dropout in the attention and feed-forward blocks
    patch_stem: str = "linear"       # scratch encoder: "linear" (ViT) or "colour-shape" (see minicap.patches)
    output_positions: bool = False   # scratch encoder: add patch positions to its output too (relations)
    stem_hidden_dim: int = 0         # colour-shape stem: GELU layer width before its projections (0: linear)
    backbone: str = "scratch"        # "scratch", or a pretrained "vit-b16" / "vit-b32" (vit extra)
    freeze_backbone: bool = True     # keep a pretrained backbone's weights fixed
    batch_size: int = 64             # captions per step
    epochs: int = 8                  # passes over the training images (one reference each)
    warmup_steps: int = 300          # learning-rate warm-up (TransformerSchedule)
    lr_scale: float = 1.0            # multiplies the schedule's learning rate
    label_smoothing: float = 0.0     # ε of the masked cross-entropy
    weight_decay: float = 0.0        # AdamW's decoupled weight decay of the weight matrices (0: Adam)
    word_dropout: float = 0.0        # chance of replacing each decoder input word by [UNK] (training only)
    mixed_precision: bool = False    # bfloat16 (float16 on GPUs older than Ampere), float32 weights
    jit_compile: str = "auto"        # XLA: "auto" (Keras decides), "on" or "off"
    checkpoint_every: int = 200      # steps between checkpoints (also one at each epoch's end)
    seed: int = 0                    # seeds data order, initial weights and dropout

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)


PROFILES = {
    # 72-pixel images in 24-pixel patches: the 3 x 3 patches are the scenes' 3 x 3 grid cells, so each object
    # lies inside one patch. The colour-shape patch encoder, with a hidden layer that recognises shapes in the
    # colour-blind foreground map, lets the model name colour-and-shape pairs it never saw (held-out split); the
    # positions added to the encoder's output let it learn relations ("left of"). Whether a small model learns the
    # relations at all depends on its initialisation: with 4 heads and 1 encoder layer it did for 1 seed in 3 (with
    # the stem's hidden layer); 8 heads and 2 encoder layers learned them for every seed we tried. Dropout and word
    # dropout cost held-out faithfulness here; strong label smoothing keeps relations learnable (0.1 lost them for a
    # seed). Measured on a 2-core CPU with tests/bench_seeds.py (300 scenes per split): 4500 steps in about 3.2
    # minutes; faithful captions for seeds 0-4: 98.7-100% on new scenes, 92.3 / 94.3 / 91.0 / 96.7 / 88.7% on
    # held-out ones (seed 4 lost relations on a few held-out scenes).
    "quick": TrainConfig(image_size=72, patch_size=24, model_dim=64, num_heads=8, encoder_layers=2, dropout=0.0,
                         epochs=12, label_smoothing=0.3, patch_stem="colour-shape", stem_hidden_dim=128,
                         output_positions=True),
    "gpu": TrainConfig(num_train=40000, num_val=1000, image_size=128, max_objects=3, max_length=24, patch_size=16,
                       model_dim=256, num_heads=8, encoder_layers=4, decoder_layers=3, mlp_dim=1024,
                       batch_size=128, epochs=20, warmup_steps=1000, patch_stem="colour-shape", stem_hidden_dim=256,
                       output_positions=True, mixed_precision=True, jit_compile="on"),
}


def profile(name, **overrides):
    """The named profile's TrainConfig with ``overrides`` applied (unknown names are an error)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return TrainConfig.from_dict({**dataclasses.asdict(PROFILES[name]), **overrides})


def load_data(config):
    """The training and validation data of ``config``: ``(train, val)``, each with images and captions."""
    if config.dataset != "shapes":
        from minicap.data import real_datasets

        return real_datasets.load(config)
    from minicap.data.shapes import make_shapes

    common = dict(image_size=config.image_size, max_objects=config.max_objects)
    train_split = make_shapes(config.num_train, split="train", seed=config.seed, **common)
    val_split = make_shapes(config.num_val, split="val", seed=config.seed + 1, **common)
    return train_split, val_split


def model_config(config, vocab_size, pad_id):
    """The CaptionConfig that ``config`` describes, for a vocabulary of ``vocab_size`` words."""
    from minicap.model import CaptionConfig

    return CaptionConfig(
        vocab_size=vocab_size, max_length=config.max_length, image_size=config.image_size,
        patch_size=config.patch_size, model_dim=config.model_dim, num_heads=config.num_heads,
        encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers, mlp_dim=config.mlp_dim,
        dropout=config.dropout, patch_stem=config.patch_stem, output_positions=config.output_positions,
        stem_hidden_dim=config.stem_hidden_dim, backbone=config.backbone, freeze_backbone=config.freeze_backbone,
        pad_id=pad_id,
    )


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

    @property
    def model_path(self):
        return self.run_dir / "model.keras"


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
        previous = json.loads(saved.read_text())
        if previous != dataclasses.asdict(config):
            changed = sorted(k for k in previous if previous.get(k) != dataclasses.asdict(config).get(k))
            raise ValueError(
                f"{run_dir} holds an interrupted run with different settings ({', '.join(changed)}); resume it "
                f"with the same settings, or use another run directory")


def train(config, run_dir, overwrite=False, verbose="auto", callbacks=()):
    """Train a captioning model as ``config`` says, in ``run_dir``; resume if it was interrupted.

    Args:
        config: a :class:`TrainConfig`, or a profile name (``"quick"``, ``"gpu"``).
        run_dir: the run directory (see the module docstring of :mod:`minicap.training`).
        overwrite: replace a finished run's model instead of refusing.
        verbose: ``model.fit``'s verbosity (1: a progress bar, 2: a line per epoch).
        callbacks: more Keras callbacks.

    Returns:
        a :class:`TrainResult`.
    """
    from minicap.data.pipeline import CaptionBatches
    from minicap.model import CaptionModel
    from minicap.text import Tokenizer

    config = profile(config) if isinstance(config, str) else config
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, config, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "train_config.json", dataclasses.asdict(config))

    keras.utils.set_random_seed(config.seed)
    policy = _set_precision(config)
    train_split, val_split = load_data(config)
    tokenizer = Tokenizer.fit([c for refs in train_split.captions for c in refs])
    model = CaptionModel(model_config(config, len(tokenizer), tokenizer.pad_id))
    compile_model(model, tokenizer.pad_id, config.warmup_steps, config.lr_scale, config.label_smoothing,
                  jit_compile={"auto": "auto", "on": True, "off": False}[config.jit_compile],
                  weight_decay=config.weight_decay)
    batches = CaptionBatches(train_split.images, train_split.captions, tokenizer, config.max_length,
                             config.batch_size, shuffle=True, seed=config.seed, word_dropout=config.word_dropout)
    val_batches = CaptionBatches(val_split.images, val_split.captions, tokenizer, config.max_length,
                                 config.batch_size, shuffle=False)

    history = History(run_dir / "history.json")
    checkpointer = Checkpointer(run_dir / "checkpoints", config.checkpoint_every,
                                extra=lambda: {"history": history.record})
    all_callbacks = [history, checkpointer, *callbacks]
    state = checkpointer.restore(model)
    epoch, skip, resumed = 0, 0, 0
    if state:
        history.record = state["history"]
        epoch, skip, resumed = state["epoch"], state["step_in_epoch"], state["step"]
        if skip >= len(batches):  # saved after an epoch's last step, before its end: the epoch is done
            epoch, skip = epoch + 1, 0
        print(f"resuming {run_dir} from step {resumed} (epoch {epoch + 1}, batch {skip})")
    # One fit per epoch over a fixed view of that epoch's batches: the order depends only on the seed
    # and the epoch number, so a resumed run sees exactly the batches an uninterrupted one would.
    # (fit's own shuffle is off: it would reorder the batches at random.)
    fit = dict(validation_data=val_batches, callbacks=all_callbacks, verbose=verbose, shuffle=False)
    for epoch in range(epoch, config.epochs):
        checkpointer.batch_offset = skip
        model.fit(_EpochView(batches, epoch, skip), epochs=epoch + 1, initial_epoch=epoch, **fit)
        skip = 0
    checkpointer.batch_offset = 0

    tokenizer.save(run_dir / "tokenizer.json")
    model.config.save(run_dir / "config.json")
    history.save()
    save_model_atomic(model, run_dir / "model.keras")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    keras.mixed_precision.set_global_policy("float32")  # leave the process as it was
    return TrainResult(model, tokenizer, history.record, run_dir, resumed)


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


def train_or_load(config, run_dir, retrain=False, verbose="auto"):
    """Load the finished run in ``run_dir`` if there is one (and ``retrain`` is False), else train it.

    Chapter 6 uses this: it reads chapter 5's model, or trains the same one if it is missing
    (e.g. when chapter 6 is opened alone on Colab).
    """
    if not retrain and (Path(run_dir) / "model.keras").exists():
        model, tokenizer = load_run(run_dir)
        history = json.loads((Path(run_dir) / "history.json").read_text())
        return TrainResult(model, tokenizer, history, Path(run_dir), 0)
    return train(config, run_dir, overwrite=retrain, verbose=verbose)
