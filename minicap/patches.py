"""From an image to a sequence of patch embeddings (chapter 1).

A Transformer reads sequences. The Vision Transformer turns an image into one by cutting it into
non-overlapping ``patch_size`` × ``patch_size`` squares, flattening each, and projecting each
flattened patch to the model width, plus a learned embedding of where the patch sits.

Reference: Dosovitskiy et al., "An image is worth 16x16 words" (2020), section 3.1.
"""
import keras
from keras import ops

from minicap.positional import PositionEmbedding

__all__ = ["Patches", "PatchEncoder", "ConvPatchEncoder", "check_image_shape"]


def check_image_shape(shape, patch_size):
    """Raise a ValueError naming the problem if ``shape`` is not ``(batch, H, W, C)`` with H and W
    divisible by ``patch_size``; return ``(H // patch_size, W // patch_size)``.

    Example:
        >>> check_image_shape((None, 224, 224, 3), 32)
        (7, 7)
    """
    if len(shape) != 4:
        raise ValueError(
            f"expected images of shape (batch, height, width, channels), got a {len(shape)}-D "
            f"input of shape {tuple(shape)}; add a batch axis with image[None] for one image"
        )
    height, width = shape[1], shape[2]
    for name, size in (("height", height), ("width", width)):
        if size is not None and size % patch_size:
            raise ValueError(
                f"image {name} {size} is not divisible by patch size {patch_size}; resize the "
                f"image to a multiple of {patch_size} (e.g. {size - size % patch_size or patch_size})"
            )
    if height is None or width is None:
        return None
    return height // patch_size, width // patch_size


@keras.saving.register_keras_serializable(package="minicap")
class Patches(keras.layers.Layer):
    """Cuts images into non-overlapping square patches and flattens each one.

    Patches are numbered row by row (row-major), and each patch is flattened row by row with its
    channels innermost, so patch ``n`` of an image ``x`` is
    ``x[r*P:(r+1)*P, c*P:(c+1)*P, :].reshape(-1)`` with ``r, c = divmod(n, W // P)``.

    Args:
        patch_size: side ``P`` of a square patch, in pixels.

    Call arguments:
        images: ``(batch, height, width, channels)``; height and width divisible by ``P``.

    Returns:
        ``(batch, num_patches, P * P * channels)`` with ``num_patches = (height/P)·(width/P)``.

    Example:
        >>> images = keras.random.uniform((1, 128, 128, 3))
        >>> tuple(Patches(16)(images).shape)
        (1, 64, 768)
    """

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        self.patch_size = int(patch_size)

    def build(self, input_shape):
        check_image_shape(input_shape, self.patch_size)

    def call(self, images):
        shape = ops.shape(images)
        grid = check_image_shape(shape, self.patch_size)
        batch, channels, size = shape[0], shape[3], self.patch_size
        rows, cols = grid
        x = ops.reshape(images, (batch, rows, size, cols, size, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, rows, cols, P, P, C)
        return ops.reshape(x, (batch, rows * cols, size * size * channels))  # (B, N, P*P*C)

    def compute_output_shape(self, input_shape):
        grid = check_image_shape(input_shape, self.patch_size)
        num_patches = None if grid is None else grid[0] * grid[1]
        channels = input_shape[3]
        depth = None if channels is None else self.patch_size**2 * channels
        return (input_shape[0], num_patches, depth)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class PatchEncoder(keras.layers.Layer):
    """Projects flattened patches to ``projection_dim`` and adds a learned position embedding.

    The projection is a single ``Dense`` layer shared by all patches: the same as a ``Conv2D``
    whose kernel and stride equal the patch size (chapter 1 checks this numerically).

    Args:
        num_patches: number of patches ``N`` (the positions to learn).
        projection_dim: model width ``d``.

    Call arguments:
        patches: ``(batch, num_patches, patch_values)``, from ``Patches``.

    Returns:
        ``(batch, num_patches, projection_dim)``.

    Example:
        >>> patches = Patches(16)(keras.random.uniform((2, 64, 64, 3)))  # (2, 16, 768)
        >>> tuple(PatchEncoder(num_patches=16, projection_dim=32)(patches).shape)
        (2, 16, 32)
    """

    # As a patch stem of ``VisionEncoder`` (chapter 4): it reads the flattened patches of centred pixels.
    reads_patches, centred = True, True

    @classmethod
    def from_settings(cls, image_size, patch_size, model_dim, hidden_dim=0, **kwargs):
        """The stem for ``image_size`` images in ``patch_size`` patches (``hidden_dim``: unused)."""
        return cls((image_size // patch_size) ** 2, model_dim, **kwargs)

    def __init__(self, num_patches, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection_dim = projection_dim
        self.projection = keras.layers.Dense(projection_dim, dtype=self.dtype_policy, name="projection")
        self.position_embedding = PositionEmbedding(
            num_patches, dtype=self.dtype_policy, name="position_embedding"
        )

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"PatchEncoder expects patches of shape (batch, num_patches, values), got {input_shape}"
            )
        if input_shape[1] is not None and input_shape[1] != self.num_patches:
            raise ValueError(
                f"PatchEncoder was built for {self.num_patches} patches, got {input_shape[1]}"
            )
        self.projection.build(input_shape)
        self.position_embedding.build((input_shape[0], self.num_patches, self.projection_dim))

    def call(self, patches):
        x = self.projection(patches)  # (B, N, d)
        return x + self.position_embedding(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"num_patches": self.num_patches, "projection_dim": self.projection_dim})
        return config


@keras.saving.register_keras_serializable(package="minicap")
class ConvPatchEncoder(keras.layers.Layer):
    """A convolutional stem in place of the linear patch projection, plus a learned position embedding.

    Xiao et al., "Early convolutions help transformers see better" (2021): a few 3 x 3 convolutions of
    stride 2 (stride 3 for a factor 3 of the patch size), each followed by a ReLU, then a 1 x 1
    convolution to ``projection_dim``; their strides multiply to ``patch_size``, so the output has one
    vector per ``patch_size`` x ``patch_size`` patch, as ``PatchEncoder``'s does.

    Args:
        image_size: side of the square input images, divisible by ``patch_size``.
        patch_size: side ``P`` of a patch; a product of 2s and at most one 3 (4, 6, 8, 12, 16, 24, 32).
        projection_dim: model width ``d``.
        channels: width of the last 3 x 3 convolution (each earlier one has half the next one's);
            0 means ``projection_dim``.

    Call arguments:
        images: ``(batch, image_size, image_size, 3)`` floats (centred: the caller maps [0, 1] to [-1, 1]).

    Returns:
        ``(batch, num_patches, projection_dim)``.

    Example:
        >>> stem = ConvPatchEncoder(image_size=64, patch_size=8, projection_dim=32)
        >>> tuple(stem(keras.random.uniform((2, 64, 64, 3))).shape)
        (2, 64, 32)
    """

    # As a patch stem of ``VisionEncoder`` (chapter 4): it reads the whole image, centred.
    reads_patches, centred = False, True

    @classmethod
    def from_settings(cls, image_size, patch_size, model_dim, hidden_dim=0, **kwargs):
        """The stem for ``image_size`` images in ``patch_size`` patches; ``hidden_dim`` is ``channels``."""
        return cls(image_size, patch_size, model_dim, channels=hidden_dim, **kwargs)

    def __init__(self, image_size, patch_size, projection_dim, channels=0, **kwargs):
        super().__init__(**kwargs)
        grid = check_image_shape((None, image_size, image_size, 3), patch_size)
        strides, rest = [], int(patch_size)
        while rest % 2 == 0:
            strides.append(2)
            rest //= 2
        if rest == 3:
            strides.append(3)
            rest = 1
        if rest != 1 or not strides:
            raise ValueError(f"the conv stem needs a patch size that is a product of 2s and at most one 3 "
                             f"(e.g. 8, 12, 16), got {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.projection_dim = projection_dim
        self.channels = channels
        self.grid = grid
        self.num_patches = grid[0] * grid[1]
        last = channels or projection_dim
        widths = [max(last // 2 ** (len(strides) - 1 - i), 8) for i in range(len(strides))]
        policy = self.dtype_policy
        self.convolutions = [
            keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu", dtype=policy,
                                name=f"conv_{i}")
            for i, (width, stride) in enumerate(zip(widths, strides))
        ]
        self.projection = keras.layers.Conv2D(projection_dim, 1, dtype=policy, name="projection")
        self.position_embedding = PositionEmbedding(self.num_patches, dtype=policy, name="position_embedding")

    def build(self, input_shape):
        shape = (None, self.image_size, self.image_size, 3)
        for conv in self.convolutions + [self.projection]:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.position_embedding.build((None, self.num_patches, self.projection_dim))

    def call(self, images):
        # [start-conv-stem]
        x = images  # (B, H, W, 3), centred
        for conv in self.convolutions:  # 3 x 3 kernels, ReLU; strides 2 (or 3) multiply to patch_size
            x = conv(x)
        x = self.projection(x)  # a 1 x 1 convolution to the model width: (B, rows, cols, d)
        x = ops.reshape(x, (-1, self.num_patches, self.projection_dim))  # (B, N, d), row-major
        return x + self.position_embedding(x)  # the learned position of each patch, as in PatchEncoder
        # [end-conv-stem]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"image_size": self.image_size, "patch_size": self.patch_size,
                       "projection_dim": self.projection_dim, "channels": self.channels})
        return config
