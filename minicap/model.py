"""The captioning model: image encoder + caption decoder + vocabulary head (chapter 4).

``CaptionModel((images, tokens))`` returns the logits of the next token at every position
(teacher forcing). With a pretrained, frozen backbone the images can be replaced by the backbone's
cached patch features (``model.backbone_features(images)``), so training runs the projection and
the decoder only. For generation, ``encode`` runs the encoder once, ``init_cache`` prepares the
decoder's cache, and ``decode_step`` writes one position at a time (chapter 6).

All sizes live in one ``CaptionConfig``, which is saved as JSON next to a trained model and is
the model's whole Keras config, so ``keras.models.load_model(path, safe_mode=True)`` rebuilds it.
"""
import dataclasses
import json
import os
import zipfile

import keras
from keras import ops

from minicap.data.download import parse_hash
from minicap.decoder import Decoder
from minicap.encoder import PATCH_STEMS, VIT_VARIANTS, VisionEncoder
from minicap.vit import VIT_IMPLEMENTATIONS, pretrained_vit
from minicap.vit_weights import VIT_WEIGHTS

BACKBONES = ("scratch",) + tuple(VIT_VARIANTS)


@dataclasses.dataclass
class CaptionConfig:
    """Every size of a ``CaptionModel``, in one place."""

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
    # minicap.vit_weights), a local .npz path, or None for random weights; always None for the scratch encoder
    backbone_weights: str | None = "imagenet21k+imagenet2012"
    # the digest the weights file must have, "sha256:..." (none is published for the official files; without
    # one, the first download's SHA-256 is recorded and checked at every later use)
    backbone_weights_hash: str | None = None
    # which implementation runs the pretrained ViT: "minicap" (minicap.vit.PretrainedViT, needs nothing but
    # Keras) or "vit-keras" (minicap.encoder.ViTBackbone, the article's library, the optional vit extra)
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
        if self.backbone == "scratch":
            self.backbone_weights = None  # nothing to load: the scratch encoder starts from random weights
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
        if self.encoder_width % self.encoder_num_heads:
            raise ValueError(f"CaptionConfig.encoder_dim {self.encoder_width} is not divisible by encoder_heads "
                             f"{self.encoder_num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CaptionConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.patch_stem not in PATCH_STEMS:
            raise ValueError(f"CaptionConfig.patch_stem must be one of {list(PATCH_STEMS)}, got {self.patch_stem!r}")
        if not isinstance(self.stem_hidden_dim, int) or self.stem_hidden_dim < 0:
            raise ValueError(f"CaptionConfig.stem_hidden_dim must be an int >= 0, got {self.stem_hidden_dim!r}")
        if self.output_positions and self.encoder_width % 4:
            raise ValueError(f"CaptionConfig.output_positions needs an encoder width divisible by 4, got "
                             f"{self.encoder_width}")
        if self.backbone != "scratch" and (self.patch_stem != "linear" or self.output_positions):
            raise ValueError(f"CaptionConfig.patch_stem {self.patch_stem!r} and output_positions "
                             f"{self.output_positions} need the scratch encoder; the {self.backbone} backbone "
                             f"has its own linear patch embedding and positions")
        if self.backbone not in BACKBONES:
            raise ValueError(f"CaptionConfig.backbone {self.backbone!r} is not one of {list(BACKBONES)}")
        if self.image_size % self.encoder_patch_size:
            raise ValueError(f"CaptionConfig.image_size {self.image_size} is not divisible by the "
                             f"{self.backbone} encoder's patch size {self.encoder_patch_size}")
        if self.vocab_size is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"CaptionConfig.pad_id {self.pad_id} is not a token id below vocab_size "
                             f"{self.vocab_size}")
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

    @property
    def encoder_patch_size(self):
        """The patch side the encoder actually uses: ``patch_size``, or the pretrained ViT's."""
        return self.patch_size if self.backbone == "scratch" else VIT_VARIANTS[self.backbone]["patch_size"]

    @property
    def encoder_width(self):
        """Width of the scratch encoder's patch vectors: ``encoder_dim``, or ``model_dim`` when None."""
        return self.model_dim if self.encoder_dim is None else self.encoder_dim

    @property
    def encoder_num_heads(self):
        """Attention heads of the scratch encoder: ``encoder_heads``, or ``num_heads`` when None."""
        return self.num_heads if self.encoder_heads is None else self.encoder_heads

    @property
    def encoder_mlp_width(self):
        """Feed-forward width of the scratch encoder: ``encoder_mlp_dim``, or ``mlp_dim`` when None."""
        return self.mlp_dim if self.encoder_mlp_dim is None else self.encoder_mlp_dim

    @property
    def pretrained(self):
        """True for a pretrained ViT backbone, False for the scratch encoder."""
        return self.backbone != "scratch"

    @property
    def feature_dim(self):
        """Width of the encoder's own patch vectors, before the projection to ``model_dim``: a ViT-B
        backbone's 768, or the scratch encoder's ``encoder_width``."""
        return VIT_VARIANTS[self.backbone]["hidden_size"] if self.pretrained else self.encoder_width

    @property
    def num_patches(self):
        """How many patch vectors the encoder returns, ``(image_size / encoder_patch_size)²``."""
        return (self.image_size // self.encoder_patch_size) ** 2

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown CaptionConfig fields {unknown}; valid fields are {sorted(fields)}")
        return cls(**values)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def save(self, path):
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


@keras.saving.register_keras_serializable(package="minicap")
class CaptionModel(keras.Model):
    """Encoder (scratch ViT or pretrained ViT-B) + Dense projection + decoder + a float32 vocabulary head.

    The pretrained ViT-B is ``minicap.vit.pretrained_vit``'s: minicap's own layers by default, or
    vit-keras's model (``config.vit_implementation``).

    The encoder turns an image into patch vectors ("features") of width ``config.feature_dim``; a
    Dense layer projects them to the decoder's ``model_dim`` (only when the widths differ, for the
    scratch encoder); the decoder attends to them while it writes.

    Args:
        config: a ``CaptionConfig`` (or its dict) with ``vocab_size`` set.
        load_backbone_weights: load ``config.backbone_weights`` into a pretrained backbone.
            ``from_config`` (hence ``load_model``) passes False: the weights come from the file.

    Call arguments:
        inputs: ``(images, tokens)``: float images ``(batch, image_size, image_size, 3)`` in [0, 1]
            (or, with a pretrained backbone, its features ``(batch, num_patches, feature_dim)``,
            e.g. from a cache) and int tokens ``(batch, length)``, ``length <= max_length``; tokens
            equal to ``pad_id`` are hidden as keys from self-attention.
        training: enables dropout.

    Returns:
        float32 logits ``(batch, length, vocab_size)``: at position ``i``, the scores of the token
        that follows ``tokens[:, :i+1]``.
    """

    def __init__(self, config, load_backbone_weights=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = CaptionConfig.from_dict(config)
        if not isinstance(config, CaptionConfig):
            raise ValueError(f"config must be a CaptionConfig or a dict, got {type(config).__name__}")
        if config.vocab_size is None:
            raise ValueError("CaptionConfig.vocab_size is None: set it to the tokenizer's size, "
                             "e.g. dataclasses.replace(config, vocab_size=len(tokenizer))")
        self.config = config
        policy = self.dtype_policy
        if config.pretrained:
            self.encoder = pretrained_vit(config.image_size, config.backbone, config.vit_implementation,
                                          freeze=config.freeze_backbone, dtype=policy, name="encoder")
        else:
            self.encoder = VisionEncoder(
                config.image_size, config.patch_size, config.encoder_width, config.encoder_layers,
                config.encoder_num_heads, config.encoder_mlp_width, config.dropout, patch_stem=config.patch_stem,
                output_positions=config.output_positions, stem_hidden_dim=config.stem_hidden_dim, dtype=policy,
                name="encoder")
        self.encoder_projection = None
        if config.feature_dim != config.model_dim:
            # The decoder attends to patch vectors of its own width (the article's Dense projection of
            # the ViT's 768-wide patch tokens).
            self.encoder_projection = keras.layers.Dense(config.model_dim, dtype=policy, name="encoder_projection")
        self.decoder = Decoder(
            config.vocab_size, config.max_length, config.model_dim, config.decoder_layers, config.num_heads,
            config.mlp_dim, config.dropout, config.pad_id, dtype=policy, name="decoder")
        # float32 logits even under mixed precision, so that softmax and loss are stable.
        self.head = keras.layers.Dense(config.vocab_size, dtype="float32", name="head")
        self.build()
        if config.pretrained and config.backbone_weights and load_backbone_weights:
            self.encoder.load_weights_from(config.backbone_weights, file_hash=config.backbone_weights_hash)

    def build(self, input_shape=None):
        # Every weight is created from the config alone, so a new model can be summarised and a
        # saved one loaded before any call.
        size, dim = self.config.image_size, self.config.model_dim
        self.encoder.build((None, size, size, 3))
        if self.encoder_projection is not None:
            self.encoder_projection.build((None, self.config.num_patches, self.config.feature_dim))
        self.decoder.build((None, self.config.max_length), (None, self.config.num_patches, dim))
        self.head.build((None, self.config.max_length, dim))
        self.built = True

    def _split_inputs(self, inputs):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise ValueError(f"CaptionModel expects inputs (images, tokens), got {type(inputs).__name__}")
        return inputs

    def call(self, inputs, training=None):
        images, tokens = self._split_inputs(inputs)
        hidden = self.decoder(tokens, self.encode(images, training=training), training=training)
        return self.head(hidden)  # (B, T, V)

    def backbone_features(self, images, training=False):
        """The encoder's patch vectors before the projection, ``(batch, num_patches, feature_dim)``:
        what a frozen pretrained backbone's feature cache holds."""
        return self.encoder(images, training=training)

    def is_features(self, inputs):
        """True when ``inputs`` are backbone features ``(batch, num_patches, feature_dim)`` rather than
        images; raises a ValueError naming the shape when they are neither."""
        shape = tuple(ops.shape(inputs))
        config = self.config
        if len(shape) == 3:
            expected = (config.num_patches, config.feature_dim)
            if not config.pretrained or tuple(shape[1:]) != expected:
                what = f"features of shape (batch, {expected[0]}, {expected[1]})" if config.pretrained else "no features"
                raise ValueError(f"CaptionModel got a 3-D input of shape {shape}; this model takes images of shape "
                                 f"(batch, {config.image_size}, {config.image_size}, 3) and {what}")
            return True
        return False

    def encode(self, inputs, training=False):
        """The patch vectors the decoder attends to, ``(batch, num_patches, model_dim)``, from images or
        (pretrained backbone) from cached backbone features."""
        if self.is_features(inputs):
            patches = ops.cast(inputs, self.compute_dtype)  # (B, N, feature_dim), e.g. float16 from a cache
        else:
            patches = self.backbone_features(inputs, training=training)  # (B, N, feature_dim)
        if self.encoder_projection is not None:
            patches = self.encoder_projection(patches)  # (B, N, model_dim)
        return patches

    def init_cache(self, encoder_output, max_length=None):
        """The decoder cache for up to ``max_length`` (default ``config.max_length``) positions; see
        ``Decoder.init_cache``. Every leaf has a leading batch axis."""
        return self.decoder.init_cache(encoder_output, max_length)

    def decode_step(self, tokens, cache, index):
        """Logits ``(batch, t, vocab_size)`` of ``tokens`` ``(batch, t)`` at positions ``index..``, and
        the updated cache. Equals ``model((images, all_tokens))[:, index:index+t]`` (inference mode)."""
        hidden, cache = self.decoder.step(tokens, cache, index)
        return self.head(hidden), cache

    def attention_scores(self, images, tokens):
        """Attention weights of a full (inference) pass: ``{"self": [per layer (batch, heads, T, T)],
        "cross": [per layer (batch, heads, T, num_patches)]}``."""
        encoder_output = self.encode(images, training=False)
        _, scores = self.decoder(tokens, encoder_output, return_attention_scores=True, training=False)
        return scores

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        values = dict(config.pop("config"))
        if values.get("backbone", "scratch") != "scratch":
            # A model saved before minicap had its own ViT holds vit-keras's: rebuild that one.
            values.setdefault("vit_implementation", "vit-keras")
        return cls(values, load_backbone_weights=False, **config)


def load_captioner(model_path, tokenizer_path=None):
    """Load a trained ``CaptionModel`` (``safe_mode=True``) and its tokenizer; check they belong together.

    Args:
        model_path: a ``.keras`` file written by ``minicap train`` (``run_dir/model.keras``).
        tokenizer_path: its ``tokenizer.json``; default: the one next to the model.

    Returns:
        ``(model, tokenizer)``. Raises ``FileNotFoundError`` or ``ValueError`` naming the file and
        the problem: a missing file, a file that is not a minicap model, a tampered tokenizer, or a
        tokenizer whose vocabulary does not match the model's.
    """
    import minicap.training  # noqa: F401 (registers the loss and metric a compiled model names)
    from minicap.text import Tokenizer

    model_path = os.fspath(model_path)
    tokenizer_path = os.fspath(tokenizer_path or os.path.join(os.path.dirname(model_path) or ".", "tokenizer.json"))
    def check_exists(path, what):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such {what} file" + (" (a directory?)" if os.path.isdir(path) else ""))

    # The model first, completely: a wrong model path is the likelier mistake, and its tokenizer
    # is only looked for next to it.
    check_exists(model_path, "model")
    if not zipfile.is_zipfile(model_path):
        raise ValueError(f"{model_path} is not a Keras model file (.keras files are zip archives); "
                         f"pass the model.keras that minicap train wrote")
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as error:  # noqa: BLE001 (Keras raises many types for a bad archive)
        raise ValueError(f"{model_path} could not be loaded as a minicap model: {error}") from error
    if not isinstance(model, CaptionModel):
        raise ValueError(f"{model_path} holds a {type(model).__name__}, not a minicap CaptionModel")
    check_exists(tokenizer_path, "tokenizer")
    tokenizer = Tokenizer.load(tokenizer_path)
    if len(tokenizer) != model.config.vocab_size or tokenizer.pad_id != model.config.pad_id:
        raise ValueError(
            f"{tokenizer_path} ({len(tokenizer)} tokens) does not match {model_path} (vocabulary of "
            f"{model.config.vocab_size}): use the tokenizer.json saved with this model")
    return model, tokenizer
