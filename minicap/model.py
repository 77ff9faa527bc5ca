"""The captioning model: image encoder + caption decoder + vocabulary head (chapter 4).

``CaptionModel((images, tokens))`` returns the logits of the next token at every position
(teacher forcing). With a pretrained, frozen backbone the images can be replaced by the backbone's
cached patch features (``model.backbone_features(images)``), so training runs the projection and
the decoder only. For generation, ``encode`` runs the encoder once, ``init_cache`` prepares the
decoder's cache, and ``decode_step`` writes one position at a time (chapter 6).

All sizes live in one ``CaptionConfig`` (:mod:`minicap.config`), which is saved as JSON next to a trained
model and is the model's whole Keras config, so ``keras.models.load_model(path, safe_mode=True)`` rebuilds it.
"""
import json
import os
import zipfile

import keras
from keras import ops

import minicap.training  # noqa: F401 (registers the loss and metric that a compiled, saved model names)
from minicap.config import CaptionConfig
from minicap.decoder import Decoder
from minicap.encoder import VisionEncoder
from minicap.text import Tokenizer
from minicap.vit import pretrained_vit

__all__ = ["CaptionModel", "load_captioner", "check_model_file"]

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

    Example:
        >>> config = CaptionConfig(vocab_size=30, max_length=6, image_size=32, patch_size=8,
        ...                        model_dim=32, num_heads=2, mlp_dim=64)
        >>> model = CaptionModel(config)
        >>> images, tokens = keras.random.uniform((2, 32, 32, 3)), np.ones((2, 6), "int32")
        >>> tuple(model((images, tokens)).shape)  # the next word's logits at every position
        (2, 6, 30)
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
        spec = config.encoder_spec()  # the encoder, every default resolved
        if spec.kind == "pretrained":
            self.encoder = pretrained_vit(spec.image_size, spec.variant, spec.implementation, freeze=spec.freeze,
                                          dtype=policy, name="encoder")
        else:
            self.encoder = VisionEncoder(
                spec.image_size, spec.patch_size, spec.width, spec.num_layers, spec.num_heads, spec.mlp_dim,
                spec.dropout, patch_stem=spec.stem, output_positions=spec.output_positions,
                stem_hidden_dim=spec.stem_hidden_dim, dtype=policy, name="encoder")
        self.encoder_projection = None
        if spec.width != config.model_dim:
            # The decoder attends to patch vectors of its own width (the article's Dense projection of
            # the ViT's 768-wide patch tokens).
            self.encoder_projection = keras.layers.Dense(config.model_dim, dtype=policy, name="encoder_projection")
        self.decoder = Decoder(
            config.vocab_size, config.max_length, config.model_dim, config.decoder_layers, config.num_heads,
            config.mlp_dim, config.dropout, config.pad_id, dtype=policy, name="decoder")
        # float32 logits even under mixed precision, so that softmax and loss are stable.
        self.head = keras.layers.Dense(config.vocab_size, dtype="float32", name="head")
        self.build()
        if spec.weights and load_backbone_weights:
            self.encoder.load_weights_from(spec.weights, file_hash=spec.weights_hash)

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


# Stored code runs when Keras rebuilds these from a file (a Python function, a TensorFlow SavedModel), whatever
# safe_mode says in older Keras releases (Colab's 3.13 predates the fix of TFSMLayer, CVE-2026-1462).
CODE_RUNNING_CLASSES = {"Lambda", "TFSMLayer", "__lambda__"}


def check_model_file(path):
    """Refuse a ``.keras`` file that Keras should not be asked to load, before Keras reads it.

    The file must be a zip archive holding a ``config.json``, and every object its configuration names (each
    ``class_name``) must be one of minicap's registered classes or a plain Keras object from Keras' own modules,
    never one that runs stored code (``Lambda``, ``TFSMLayer``, a serialised lambda) nor one of an unknown
    module. This holds on every Keras version, so a file from elsewhere is checked the same way on Colab's
    older Keras as on the newest. Raises ValueError naming the file and the class.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras model file (.keras files are zip archives); "
                         f"pass the model.keras that minicap train wrote")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} could not be loaded as a minicap model: it has no readable config.json "
                         f"({error})") from None
    for entry in _serialized_objects(config):
        refused = _refused(entry)
        if refused:
            raise ValueError(f"{path} is refused: it names {entry.get('class_name')!r} (module "
                             f"{entry.get('module')!r}), {refused}; a minicap model holds minicap's layers and "
                             f"plain Keras objects only. Load files you trust, such as the model.keras minicap "
                             f"train wrote")


def _serialized_objects(value):
    """Every dict with a ``class_name`` in a Keras configuration, however deep."""
    if isinstance(value, dict):
        if "class_name" in value:
            yield value
        for item in value.values():
            yield from _serialized_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _serialized_objects(item)


def _refused(entry):
    """Why a serialised object is refused, or "" when it may be loaded."""
    name, module = str(entry.get("class_name")), entry.get("module")
    registered = entry.get("registered_name")
    if name in CODE_RUNNING_CLASSES:
        return "which runs code stored in the file"
    if isinstance(registered, str) and registered.startswith("minicap>"):
        if keras.saving.get_registered_object(registered) is None or not str(module).startswith("minicap."):
            return "which is no class of this minicap"
        return ""
    if isinstance(module, str) and (module == "keras" or module.startswith("keras.")) \
            and (registered in (None, name) or name == "function"):
        return ""
    return "which is neither one of minicap's classes nor a plain Keras object"


def load_captioner(model_path, tokenizer_path=None):
    """Load a trained ``CaptionModel`` (``safe_mode=True``) and its tokenizer; check they belong together.

    Args:
        model_path: a ``.keras`` file written by ``minicap train`` (``run_dir/model.keras``).
        tokenizer_path: its ``tokenizer.json``; default: the one next to the model.

    Returns:
        ``(model, tokenizer)``. Raises ``FileNotFoundError`` or ``ValueError`` naming the file and
        the problem: a missing file, a file that is not a minicap model (or names a class that could
        run code stored in it: :func:`check_model_file`, before Keras reads it), a tampered tokenizer,
        or a tokenizer whose vocabulary does not match the model's.
    """
    model_path = os.fspath(model_path)
    tokenizer_path = os.fspath(tokenizer_path or os.path.join(os.path.dirname(model_path) or ".", "tokenizer.json"))
    def check_exists(path, what):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such {what} file" + (" (a directory?)" if os.path.isdir(path) else ""))

    # The model first, completely: a wrong model path is the likelier mistake, and its tokenizer
    # is only looked for next to it.
    check_exists(model_path, "model")
    check_model_file(model_path)
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
