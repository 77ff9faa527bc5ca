"""Every setting of a model and of a training run, in one place: ``CaptionConfig``, ``TrainConfig``, the named
profiles, and the names the settings take (the patch stems, the pretrained ViTs, the data sets).

A ``CaptionConfig`` holds every size of a ``CaptionModel`` (it is saved as ``config.json`` and is the
model's whole Keras config); :meth:`CaptionConfig.encoder` resolves its encoder's settings, once, into an
:class:`EncoderSpec`. A ``TrainConfig`` holds a nested ``CaptionConfig`` and the training's settings (data
set, batches, schedule, seed); it is saved as ``train_config.json``. ``PROFILES`` are the named starting
points: ``quick`` (a small ViT from scratch on the built-in shapes scenes, on a CPU in minutes), ``photos``
(the article's model: a pretrained ViT-B/32, frozen, and a Transformer decoder trained on Flickr8k on a
GPU), ``gpu`` (a larger shapes model) and ``composition`` (the appendix's study). ``profile(name,
**overrides)`` returns one with settings changed by name; ``parse_overrides`` reads them from the command line.

This module imports nothing of minicap and no Keras: the layers read its tables, not the other way round.
"""
import dataclasses
import json

__all__ = ["CaptionConfig", "EncoderSpec", "TrainConfig", "PROFILES", "profile", "model_config", "parse_overrides",
           "parse_hash", "PATCH_STEMS", "VIT_VARIANTS", "VIT_WEIGHTS", "VIT_IMPLEMENTATIONS", "DATASETS"]

#: How the scratch encoder turns an image into patch vectors: the stem's name, the module and the layer class that
#: implement it (``minicap.encoder.make_patch_stem`` imports the module; the colour-shape stem is the appendix's).
PATCH_STEMS = {
    "linear": ("minicap.patches", "PatchEncoder"),  # ViT: a Dense projection of the pixels (chapter 1)
    "colour-shape": ("minicap.composition", "ColourShapePatchEncoder"),  # the composition appendix's prior
    "conv": ("minicap.patches", "ConvPatchEncoder"),  # a small convolutional stem (chapter 1)
}
#: The pretrained ViT-B variants (ViT-Base: 12 layers of width 768), by name: their architecture.
VIT_VARIANTS = {
    "vit-b16": dict(patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "vit-b32": dict(patch_size=32, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
}
#: The official weights of the variants: pretrained on ImageNet-21k, then fine-tuned on ImageNet-2012, or not.
VIT_WEIGHTS = ("imagenet21k+imagenet2012", "imagenet21k")
#: Which code runs a pretrained ViT: minicap's own layers (minicap.vit) or the article's library (minicap.vit_keras).
VIT_IMPLEMENTATIONS = ("minicap", "vit-keras")
BACKBONES = ("scratch",) + tuple(VIT_VARIANTS)
# The built-in data sets: drawn on the spot (shapes) or downloaded on demand (the others); any other
# ``dataset`` is the path of a folder (or CSV file) of the reader's own captioned images.
DOWNLOADED_DATASETS = ("flickr8k", "coco")
#: The built-in data sets' names (a ``dataset`` setting may also be the path of a folder of captioned images).
DATASETS = ("shapes",) + DOWNLOADED_DATASETS


def parse_hash(file_hash):
    """``(algorithm, hex digest)`` from ``"sha256:..."``, ``"md5:..."`` or a bare hex digest; None for None."""
    if file_hash is None:
        return None
    algorithm, _, digest = str(file_hash).rpartition(":")
    algorithm = algorithm or {32: "md5", 64: "sha256"}.get(len(digest), "")
    if algorithm not in ("md5", "sha256") or not all(c in "0123456789abcdefABCDEF" for c in digest):
        raise ValueError(
            f"file_hash must be 'sha256:<64 hex digits>' or 'md5:<32 hex digits>' (or the bare digest), got {file_hash!r}"
        )
    return algorithm, digest.lower()


def parse_overrides(items):
    """``{name: value}`` of ``NAME=VALUE`` settings (``--set`` on the command line): numbers, true/false and JSON as
    JSON, anything else a string. A ValueError names an item without ``=``.

    Example:
        >>> parse_overrides(["epochs=3", "backbone=vit-b32", "freeze_backbone=false"])
        {'epochs': 3, 'backbone': 'vit-b32', 'freeze_backbone': False}
    """
    overrides = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        if not key or not value:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)  # numbers, true/false, {"a": 1}
        except json.JSONDecodeError:
            overrides[key] = value  # plain words, e.g. --set backbone=vit-b32
    return overrides


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """What the encoder of a ``CaptionConfig`` is, resolved once (:meth:`CaptionConfig.encoder`): every size
    with its default applied, so that the model, the command line, the explorer and the benchmarks read one
    answer. The layers themselves take plain arguments (the chapters build them by hand)."""

    kind: str  # "scratch" (minicap.encoder.VisionEncoder) or "pretrained" (a ViT-B, minicap.vit)
    image_size: int  # side of the square input images, in pixels
    patch_size: int  # side of a patch, in pixels (a pretrained ViT's own)
    width: int  # width of the encoder's patch vectors (768 for a ViT-B; the scratch encoder's encoder_dim)
    num_heads: int  # attention heads of the encoder's layers
    mlp_dim: int  # hidden width of the encoder's feed-forward blocks
    num_layers: int  # encoder layers
    stem: str  # how patches are embedded: a key of PATCH_STEMS ("linear" for a pretrained ViT)
    stem_hidden_dim: int  # the conv or colour-shape stem's inner width (0: its default)
    output_positions: bool  # the 2-D encoding added again at the output (scratch encoder only)
    variant: str | None  # the pretrained ViT variant ("vit-b32"), None for the scratch encoder
    implementation: str | None  # "minicap" or "vit-keras" for a pretrained ViT, else None
    weights: str | None  # the pretrained weights to load (a name of VIT_WEIGHTS or a .npz path), else None
    weights_hash: str | None  # the digest the weights file must have, if any
    freeze: bool  # a pretrained ViT's weights stay fixed (its features can be cached)
    dropout: float  # the scratch encoder's dropout (a pretrained ViT runs without)

    @property
    def grid(self):
        """Patches per side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self):
        """How many patch vectors the encoder returns, ``grid²``."""
        return self.grid ** 2


def _from_dict(cls, values, what):
    """``cls(**values)``, or a ValueError naming the keys that are not fields of the dataclass ``cls``."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return cls(**values)


# The settings only one kind of encoder reads (see CaptionConfig.encoder_spec).
SCRATCH_ONLY = ("patch_size", "encoder_layers", "encoder_dim", "encoder_heads", "encoder_mlp_dim", "patch_stem",
                "output_positions", "stem_hidden_dim")
PRETRAINED_ONLY = ("backbone_weights", "backbone_weights_hash", "vit_implementation", "freeze_backbone")


@dataclasses.dataclass
class CaptionConfig:
    """Every size of a ``CaptionModel``, in one place.

    Example:
        >>> config = CaptionConfig(vocab_size=30, image_size=64, patch_size=8, model_dim=32,
        ...                        num_heads=4)
        >>> spec = config.encoder_spec()
        >>> spec.kind, spec.width, spec.num_patches
        ('scratch', 32, 64)
    """

    # number of token ids, including [PAD], [START], [END] and [UNK]; None in a training profile,
    # where the tokenizer fitted on the training captions decides it
    vocab_size: int | None
    max_length: int = 20  # most tokens in a decoder input ([START] + words); the cache's length
    image_size: int = 64  # side of the square input images, in pixels
    patch_size: int = 8  # patch side of the scratch encoder (a ViT-B backbone has its own, 16 or 32)
    model_dim: int = 128  # width d of patch and token vectors, in encoder and decoder
    num_heads: int = 4  # attention heads in every attention layer; divides model_dim
    encoder_layers: int = 2  # depth of the scratch encoder (unused by a pretrained backbone)
    decoder_layers: int = 2  # depth of the decoder
    mlp_dim: int = 512  # hidden width of the feed-forward blocks (usually 4 * model_dim)
    dropout: float = 0.1  # dropout rate on embeddings, attention weights and residual branches
    backbone: str = "scratch"  # "scratch" (VisionEncoder) or a pretrained ViT: "vit-b16" / "vit-b32"
    freeze_backbone: bool = True  # keep a pretrained ViT's weights fixed (its projection still trains)
    pad_id: int = 0  # the padding token id, hidden from self-attention and from the loss
    # pretrained ViT weights loaded when a model is created (not when loaded from a file): a name in
    # VIT_WEIGHTS (the official files: a local copy, $MINICAP_VIT_MIRROR or GitHub, see
    # minicap.vit_weights), a local .npz path, or None for random weights; the scratch encoder ignores it
    backbone_weights: str | None = "imagenet21k+imagenet2012"
    # the digest the weights file must have, "sha256:..." (none is published for the official files; without
    # one, the first download's SHA-256 is recorded and checked at every later use)
    backbone_weights_hash: str | None = None
    # which implementation runs the pretrained ViT: "minicap" (minicap.vit.PretrainedViT, needs nothing but
    # Keras) or "vit-keras" (minicap.vit_keras.ViTBackbone, the article's library, the optional vit extra)
    vit_implementation: str = "minicap"
    # The scratch encoder's own sizes, when it is wider than the decoder (e.g. a ViT-B/32 encoder of
    # width 768 feeding a decoder of width 512); None means the decoder's value. A Dense layer
    # projects the patch vectors to model_dim when encoder_dim differs from it.
    encoder_dim: int | None = None  # width of the scratch encoder's patch vectors (None: model_dim)
    encoder_heads: int | None = None  # attention heads in the encoder layers (None: num_heads)
    encoder_mlp_dim: int | None = None  # hidden width of the encoder's feed-forward blocks (None: mlp_dim)
    # how the scratch encoder embeds patches: "linear" (ViT: a Dense projection of the pixels), "conv" (a
    # small convolutional stem, Xiao et al. 2021) or "colour-shape" (a shape vector plus a colour vector,
    # ColourShapePatchEncoder: the composition appendix's prior for the shapes world)
    patch_stem: str = "linear"
    # add the patch grid's 2-D sinusoidal encoding to the scratch encoder's output, where the decoder
    # reads it (positions added only at the input fade through the layers; relations need them)
    output_positions: bool = False
    # colour-shape stem: a GELU layer of this width before each projection (0: none); conv stem: the width of
    # its last 3 x 3 convolution (0: model_dim)
    stem_hidden_dim: int = 0

    def __post_init__(self):
        names = ("vocab_size", "max_length", "image_size", "patch_size", "model_dim", "num_heads", "decoder_layers",
                 "mlp_dim")
        for name in names[self.vocab_size is None:]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CaptionConfig.{name} must be a positive integer, got {value!r}")
        for name in ("encoder_dim", "encoder_heads", "encoder_mlp_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"CaptionConfig.{name} must be a positive integer or None, got {value!r}")
        if self.encoder_layers < 0:
            raise ValueError(f"CaptionConfig.encoder_layers must be 0 or more, got {self.encoder_layers!r}")
        if self.model_dim % self.num_heads:
            raise ValueError(f"CaptionConfig.model_dim {self.model_dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CaptionConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.patch_stem not in PATCH_STEMS:
            raise ValueError(f"CaptionConfig.patch_stem must be one of {list(PATCH_STEMS)}, got {self.patch_stem!r}")
        if not isinstance(self.stem_hidden_dim, int) or self.stem_hidden_dim < 0:
            raise ValueError(f"CaptionConfig.stem_hidden_dim must be an int >= 0, got {self.stem_hidden_dim!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"CaptionConfig.backbone {self.backbone!r} is not one of {list(BACKBONES)}")
        if self.backbone != "scratch" and (self.patch_stem != "linear" or self.output_positions):
            raise ValueError(f"CaptionConfig.patch_stem {self.patch_stem!r} and output_positions "
                             f"{self.output_positions} need the scratch encoder; the {self.backbone} backbone "
                             f"has its own linear patch embedding and positions")
        weights = self.backbone_weights
        if weights is not None and weights not in VIT_WEIGHTS and not str(weights).endswith(".npz"):
            raise ValueError(f"CaptionConfig.backbone_weights must be one of {list(VIT_WEIGHTS)}, the path "
                             f"of a .npz file, or None; got {weights!r}")
        try:
            parse_hash(self.backbone_weights_hash)
        except ValueError as error:
            raise ValueError(f"CaptionConfig.backbone_weights_hash: {error}") from None
        if self.vit_implementation not in VIT_IMPLEMENTATIONS:
            raise ValueError(f"CaptionConfig.vit_implementation {self.vit_implementation!r} is not one of "
                             f"{list(VIT_IMPLEMENTATIONS)}")
        spec = self.encoder_spec()
        if spec.width % spec.num_heads:
            raise ValueError(f"CaptionConfig.encoder_dim {spec.width} is not divisible by encoder_heads "
                             f"{spec.num_heads} (None: model_dim and num_heads)")
        if spec.output_positions and spec.width % 4:
            raise ValueError(f"CaptionConfig.output_positions needs an encoder width divisible by 4, got {spec.width}")
        if self.image_size % spec.patch_size:
            raise ValueError(f"CaptionConfig.image_size {self.image_size} is not divisible by the "
                             f"{self.backbone} encoder's patch size {spec.patch_size}")
        if self.vocab_size is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"CaptionConfig.pad_id {self.pad_id} is not a token id below vocab_size "
                             f"{self.vocab_size}")

    def encoder_spec(self):
        """The encoder these settings describe, every default resolved: an :class:`EncoderSpec`.

        The scratch encoder takes ``patch_size``, ``patch_stem``, ``output_positions``, ``stem_hidden_dim`` and
        its own sizes (``encoder_dim``, ``encoder_heads``, ``encoder_mlp_dim``: None means the decoder's
        ``model_dim``, ``num_heads``, ``mlp_dim``); it loads no weights. A pretrained ViT takes its sizes from
        ``VIT_VARIANTS[backbone]`` and ``backbone_weights``, ``backbone_weights_hash``, ``vit_implementation``
        and ``freeze_backbone``. The settings of the other kind are ignored (:meth:`ignored_fields`).
        """
        if self.backbone == "scratch":
            return EncoderSpec(
                kind="scratch", image_size=self.image_size, patch_size=self.patch_size,
                width=self.encoder_dim or self.model_dim, num_heads=self.encoder_heads or self.num_heads,
                mlp_dim=self.encoder_mlp_dim or self.mlp_dim, num_layers=self.encoder_layers, stem=self.patch_stem,
                stem_hidden_dim=self.stem_hidden_dim, output_positions=self.output_positions, variant=None,
                implementation=None, weights=None, weights_hash=None, freeze=False, dropout=self.dropout)
        sizes = VIT_VARIANTS[self.backbone]
        return EncoderSpec(
            kind="pretrained", image_size=self.image_size, patch_size=sizes["patch_size"], width=sizes["hidden_size"],
            num_heads=sizes["num_heads"], mlp_dim=sizes["mlp_dim"], num_layers=sizes["num_layers"], stem="linear",
            stem_hidden_dim=0, output_positions=False, variant=self.backbone, implementation=self.vit_implementation,
            weights=self.backbone_weights, weights_hash=self.backbone_weights_hash, freeze=self.freeze_backbone,
            dropout=0.0)

    def ignored_fields(self):
        """The fields the encoder of these settings does not read (those of the other kind of encoder)."""
        return PRETRAINED_ONLY if self.backbone == "scratch" else SCRATCH_ONLY

    @property
    def encoder_patch_size(self):
        """The patch side the encoder actually uses: ``patch_size``, or the pretrained ViT's."""
        return self.encoder_spec().patch_size

    @property
    def pretrained(self):
        """True for a pretrained ViT backbone, False for the scratch encoder."""
        return self.backbone != "scratch"

    @property
    def feature_dim(self):
        """Width of the encoder's own patch vectors, before the projection to ``model_dim``: a ViT-B
        backbone's 768, or the scratch encoder's ``encoder_dim`` (``model_dim`` when None)."""
        return self.encoder_spec().width

    @property
    def num_patches(self):
        """How many patch vectors the encoder returns, ``(image_size / encoder_patch_size)²``."""
        return self.encoder_spec().num_patches

    def to_dict(self):
        """The settings as a plain dict of names to values (JSON types only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A CaptionConfig from a dict, as ``config.json`` stores it; unknown names are an error."""
        return _from_dict(cls, values, "CaptionConfig fields")

    def to_json(self):
        """The settings as indented JSON text, as ``config.json`` stores them."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text):
        """A CaptionConfig from JSON text (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(text))

    def save(self, path):
        """Write the settings to the JSON file ``path`` (replacing it)."""
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path):
        """A CaptionConfig read from the JSON file ``path`` that :meth:`save` wrote."""
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


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
    # where the archives are unpacked ("" = data_dir): a fast local disk while data_dir is a network drive (on
    # Colab, Google Drive keeps the archives and the feature cache; the photos are read from the runtime's disk)
    extract_dir: str = ""
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
        """The settings as a nested dict (the model's settings under ``"model"``), JSON types only."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A TrainConfig from a (nested) dict, as ``train_config.json`` stores it; unknown names are an error."""
        return _from_dict(cls, values, "training settings")

    def replace(self, **overrides):
        """A copy with ``overrides`` applied, each setting by its name: a training setting (``epochs=3``) or a
        model setting of ``CaptionConfig`` (``model_dim=256``). Unknown names are an error."""
        train_fields = {field.name for field in dataclasses.fields(self)} - {"model"}
        model_fields = {field.name for field in dataclasses.fields(CaptionConfig)} - {"vocab_size", "pad_id"}
        train_values, model_values = {}, {}
        for name, value in overrides.items():
            if name in train_fields:
                train_values[name] = value
            elif name in model_fields:
                model_values[name] = value
            else:
                raise ValueError(f"unknown setting {name!r}; training settings: {sorted(train_fields)}; "
                                 f"model settings: {sorted(model_fields)}")
        model = dataclasses.replace(self.model, **model_values) if model_values else self.model
        return dataclasses.replace(self, model=model, **train_values)


#: The named training settings, by name: ``profile(name, **overrides)`` returns one, changed.
PROFILES = {
    # A small ViT from scratch on the shapes scenes, on a CPU in minutes: 72-pixel images in 12-pixel patches (a
    # 6 x 6 grid) embedded by a convolutional stem, the 2-D positions added again at the encoder's output, 2
    # encoder and 2 decoder layers of width 64. Chapter 5's "What mattered" measures each choice; its seed table
    # checks the profile on seeds 0-4.
    "quick": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=16, image_size=72, patch_size=12, patch_stem="conv",
                            model_dim=64, num_heads=2, encoder_layers=2, mlp_dim=256, dropout=0.0,
                            output_positions=True),
        epochs=8, warmup_steps=1200, label_smoothing=0.3),
    # The appendix's composition study: a colour-shape patch encoder whose prior fits only the flat-coloured
    # shapes world, on 24-pixel patches (the scenes' grid cells). The appendix measures it on seeds 0-4.
    "composition": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=16, image_size=72, patch_size=24, model_dim=64, num_heads=8,
                            encoder_layers=2, mlp_dim=256, dropout=0.0, patch_stem="colour-shape",
                            stem_hidden_dim=128, output_positions=True),
        epochs=6, label_smoothing=0.3),
    # The article's model: ViT-B/32 pretrained on ImageNet-21k and ImageNet-2012, frozen (features cached), at
    # 224 pixels (49 patch tokens of width 768) projected to the decoder's width 256, 4 heads. Flickr8k's 6,000
    # training photos are little data for a decoder trained from scratch, hence 2 layers and dropout 0.3; rare
    # words (fewer than 5 uses) become [UNK]. Its cost was measured at Flickr8k's size on stand-ins
    # (tools/rehearse_photos.py, tools/measured/rehearse_photos.json); the quality of its captions was reasoned,
    # not measured: no machine of this project reaches Flickr8k.
    "photos": TrainConfig(
        model=CaptionConfig(vocab_size=None, backbone="vit-b32", image_size=224, max_length=24, model_dim=256,
                            num_heads=4, decoder_layers=2, mlp_dim=1024, dropout=0.3),
        dataset="flickr8k", min_word_count=5, batch_size=64, epochs=12, warmup_steps=1000, lr_scale=0.5,
        label_smoothing=0.1, checkpoint_every=500, mixed_precision=True),
    # A larger shapes model, for a GPU.
    "gpu": TrainConfig(
        model=CaptionConfig(vocab_size=None, max_length=24, image_size=128, patch_size=16, model_dim=256, num_heads=8,
                            encoder_layers=4, decoder_layers=3, mlp_dim=1024, patch_stem="colour-shape",
                            stem_hidden_dim=256, output_positions=True),
        num_train=40000, num_val=1000, max_objects=3, batch_size=128, epochs=20, warmup_steps=1000,
        mixed_precision=True, jit_compile="on"),
}


def profile(name, **overrides):
    """The named profile's TrainConfig with ``overrides`` applied (see :meth:`TrainConfig.replace`).

    Example:
        >>> settings = profile("quick", epochs=3, model_dim=128)
        >>> settings.epochs, settings.model.model_dim, settings.dataset
        (3, 128, 'shapes')
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return dataclasses.replace(PROFILES[name], profile=name).replace(**overrides)


def model_config(config, vocab_size, pad_id):
    """The CaptionConfig that ``config`` (a TrainConfig) describes, for a vocabulary of ``vocab_size`` words."""
    return dataclasses.replace(config.model, vocab_size=vocab_size, pad_id=pad_id)
