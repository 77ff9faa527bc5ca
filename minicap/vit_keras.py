"""The article's implementation of the pretrained ViT: vit-keras's model, wrapped (chapter 4).

The article this book follows builds its ViT-B/32 with the vit-keras package. :class:`ViTBackbone` wraps
vit-keras's model so that it returns every patch token, as minicap's own :class:`minicap.vit.PretrainedViT`
does; ``CaptionConfig(vit_implementation="vit-keras")`` selects it. vit-keras is optional (the ``vit``
extra): it declares Python < 3.12, so this module imports it only when a ``ViTBackbone`` is made.
"""
import keras
from keras import ops

from minicap.patches import check_image_shape
from minicap.vit_weights import check_official_keys, read_weights_file, vit_architecture, weights_file

VIT_INSTALL_HINT = (
    "The vit-keras implementation of the pretrained ViT (vit_implementation='vit-keras') needs the optional "
    "package vit-keras 0.2.0; minicap's own (vit_implementation='minicap', the default) needs nothing more. "
    "Install vit-keras with\n"
    "    pip install 'minicap[vit]'\n"
    "or, on Python 3.12+ (where vit-keras declares it does not install):\n"
    "    pip install --no-deps --ignore-requires-python vit-keras==0.2.0 opencv-python-headless validators scipy"
)


def import_vit_keras():
    """Import vit-keras's ``vit`` and ``utils`` modules, or raise an ImportError that says how to install it."""
    try:
        from vit_keras import utils, vit
    except ImportError as error:
        raise ImportError(f"{VIT_INSTALL_HINT}\n(import failed: {error})") from error
    return vit, utils


@keras.saving.register_keras_serializable(package="minicap")
class ViTBackbone(keras.layers.Layer):
    """A (pretrained) ViT from vit-keras, returning every patch token: the image's "features".

    The article's implementation (``CaptionConfig(vit_implementation="vit-keras")``); minicap's own,
    ``minicap.vit.PretrainedViT``, loads the same weights and computes the same features without it.

    vit-keras's model ends by keeping the class token only (for classification); this layer taps
    the sequence after the encoder's final layer norm instead and drops the class token, so the
    caption decoder can attend to each of the ``num_patches`` patch tokens. They are
    ``hidden_size`` wide (768 for ViT-B); ``CaptionModel`` projects them to the decoder's width
    with a trainable Dense layer. When the ViT is frozen its output never changes during training,
    so it can be computed once per image and cached (``minicap.data.features``).

    The layer's config holds the architecture only: constructing it never downloads anything.
    Call ``load_weights_from(weights)`` to load pretrained weights (``CaptionModel`` does so when
    it is created from a ``CaptionConfig``); a saved ``.keras`` model restores them from the file.

    Args:
        image_size: side of the square input images, divisible by ``patch_size``.
        variant: ``"vit-b16"`` or ``"vit-b32"``, or ``None`` to give the architecture below.
        freeze: keep the ViT's weights fixed, and run it without dropout.
        patch_size, hidden_size, num_layers, num_heads, mlp_dim: the ViT architecture when
            ``variant`` is None (small configurations for tests and experiments).
        dropout: dropout rate inside the ViT when it is trained.

    Call arguments:
        images: ``(batch, image_size, image_size, 3)`` floats in [0, 1] (mapped to vit-keras's
            [-1, 1] inside).
        training: enables dropout (in the ViT only when not frozen).

    Returns:
        ``(batch, num_patches, hidden_size)``: the patch tokens, without the class token.

    Reference: Dosovitskiy et al., "An image is worth 16x16 words" (2020).
    """

    def __init__(self, image_size, variant="vit-b32", freeze=True, patch_size=None, hidden_size=None,
                 num_layers=None, num_heads=None, mlp_dim=None, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        architecture = vit_architecture(variant, patch_size=patch_size, hidden_size=hidden_size,
                                        num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim)
        self.image_size = image_size
        self.variant = variant
        self.freeze = freeze
        self.patch_size, self.hidden_size = patch_size, hidden_size
        self.num_layers, self.num_heads, self.mlp_dim = num_layers, num_heads, mlp_dim
        self.dropout = dropout
        self.architecture = architecture
        grid = check_image_shape((None, image_size, image_size, 3), architecture["patch_size"])
        self.num_patches = grid[0] * grid[1]
        self.output_dim = architecture["hidden_size"]
        vit, _ = import_vit_keras()
        full = vit.build_model(
            image_size=image_size, name=variant or "vit", classes=1, include_top=False, dropout=dropout,
            **architecture,
        )
        # The sequence (class token + patches) before vit-keras's "ExtractToken" keeps only the class token.
        self.vit = keras.Model(full.input, full.get_layer("Transformer_encoder_norm").output, name="vit")
        self.vit.trainable = not freeze

    def build(self, input_shape):
        self.built = True  # the vit-keras model was built when it was created

    def load_weights_from(self, weights="imagenet21k+imagenet2012", file_hash=None):
        """Load pretrained weights: a name in ``VIT_WEIGHTS`` (found or downloaded by
        ``minicap.vit_weights.weights_file``, the same files vit-keras downloads, checked against
        ``file_hash`` when given) or the path of a local ``.npz`` file in the official format."""
        _, utils = import_vit_keras()
        grid = self.image_size // self.architecture["patch_size"]
        path = weights_file(weights, self.variant, file_hash=file_hash)
        # minicap reads the file first (never unpickling anything) and checks it, so that a damaged or wrong file
        # gets minicap's one-line error, not vit-keras's traceback.
        check_official_keys(read_weights_file(path), self.architecture, path)
        utils.load_weights_numpy(model=self.vit, params_path=path, pretrained_top=False,
                                 num_x_patches=grid, num_y_patches=grid)

    def call(self, images, training=None):
        if tuple(ops.shape(images)[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"ViTBackbone built for {self.image_size}x{self.image_size} images got input of shape "
                f"{tuple(ops.shape(images))}"
            )
        images = ops.cast(images, self.compute_dtype) * 2.0 - 1.0  # vit-keras expects [-1, 1]
        tokens = self.vit(images, training=False if self.freeze else training)  # (B, 1 + N, hidden)
        return tokens[:, 1:]  # (B, N, hidden): the patch tokens, without the class token

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_size": self.image_size, "variant": self.variant, "freeze": self.freeze,
            "patch_size": self.patch_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
        })
        return config
