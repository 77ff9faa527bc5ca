"""The composition appendix's patch encoder: a prior that fits only the shapes world.

:class:`ColourShapePatchEncoder` keeps *what shape* apart from *what colour*, which lets a small model name a
colour-and-shape pair it never saw in training (the appendix measures it). It depends on the flat-coloured
shapes on a plain background of minicap's built-in scenes; a photograph has neither, which is why the book's
main line (chapter 1) uses the linear projection or the convolutional stem instead.
"""
import keras
from keras import ops

from minicap.patches import Patches, check_image_shape
from minicap.positional import sinusoidal_encoding_2d


@keras.saving.register_keras_serializable(package="minicap")
class ColourShapePatchEncoder(keras.layers.Layer):
    """A patch encoder that keeps *what shape* apart from *what colour* (the composition appendix).

    The linear ``PatchEncoder`` projects raw pixels, so a yellow circle's vector is a product of
    its yellowness and its roundness: a model that never saw a yellow circle has never seen that
    vector. This encoder gives each patch the sum of two vectors, each blind to the other attribute:

    - **shape**: the image's background colour is estimated as its per-channel median (objects
      cover a minority of the pixels; a sparse grid of them is enough); a pixel's *contrast* is
      its distance from it, and its *foreground* value
      ``sigmoid(sharpness · (contrast - threshold))`` is about 1 on any object whatever its
      colour, and about 0 elsewhere. Each patch of that foreground map is projected by a
      ``Dense`` layer (after a hidden layer, if ``hidden_dim``): the same outline gives the same
      vector in every colour.
    - **colour**: the foreground-weighted mean colour of the patch,
      ``sum(f · pixel) / (sum(f) + 1)``, projected by another ``Dense`` layer: the same colour
      gives nearly the same vector in every shape (and a patch without an object gives about 0).

    plus the patch grid's fixed 2-D sinusoidal encoding (chapter 2). It is a *prior* about images made
    of flat-coloured objects on a plain background, such as the shapes scenes: the book's appendix
    shows that it lets a small model name colour-and-shape pairs it never saw in training.

    Args:
        image_size: side of the square input images, divisible by ``patch_size``.
        patch_size: side ``P`` of a square patch, in pixels.
        projection_dim: model width ``d``.
        threshold: contrast (Euclidean RGB distance, images in [0, 1]) at which a pixel is half
            foreground. Shapes objects differ from their background by 0.27 or more, pixel noise
            by about 0.04.
        sharpness: slope of the foreground sigmoid (per unit of contrast).
        hidden_dim: width of a GELU layer before each projection (0: none, the projections are
            linear). A hidden layer lets the shape stream recognise an outline wherever it sits in
            its patch, before anything mixes shape with colour.

    Call arguments:
        images: ``(batch, image_size, image_size, 3)`` floats in [0, 1].

    Returns:
        ``(batch, num_patches, projection_dim)`` with ``num_patches = (image_size / P)²``.
    """

    # As a patch stem of ``VisionEncoder`` (``patch_stem="colour-shape"``): it reads the whole image, in [0, 1].
    reads_patches, centred = False, False

    @classmethod
    def from_settings(cls, image_size, patch_size, model_dim, hidden_dim=0, **kwargs):
        """The stem for ``image_size`` images in ``patch_size`` patches, with a hidden layer of ``hidden_dim``."""
        return cls(image_size, patch_size, model_dim, hidden_dim=hidden_dim, **kwargs)

    def __init__(self, image_size, patch_size, projection_dim, threshold=0.15, sharpness=60.0, hidden_dim=0,
                 **kwargs):
        super().__init__(**kwargs)
        grid = check_image_shape((None, image_size, image_size, 3), patch_size)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) (a contrast of images in [0, 1]), got {threshold!r}")
        if sharpness <= 0:
            raise ValueError(f"sharpness must be positive, got {sharpness!r}")
        if not isinstance(hidden_dim, int) or hidden_dim < 0:
            raise ValueError(f"hidden_dim must be an int >= 0 (0: linear projections), got {hidden_dim!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.projection_dim = projection_dim
        self.threshold = threshold
        self.sharpness = sharpness
        self.hidden_dim = hidden_dim
        self.num_patches = grid[0] * grid[1]
        policy = self.dtype_policy
        self.patches = Patches(patch_size, dtype=policy, name="patches")
        self.shape_projection = self._projection("shape_projection")
        self.colour_projection = self._projection("colour_projection")
        self.grid = grid

    def build(self, input_shape):
        if len(input_shape) != 4 or tuple(input_shape[1:]) != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"ColourShapePatchEncoder built for {self.image_size}x{self.image_size} RGB images got input "
                f"of shape {tuple(input_shape)}; expected (batch, {self.image_size}, {self.image_size}, 3)")
        self.shape_projection.build((None, self.num_patches, self.patch_size**2))
        self.colour_projection.build((None, self.num_patches, 3))

    def _projection(self, name):
        """A Dense projection to ``projection_dim``, after a GELU layer of ``hidden_dim`` if it is not 0."""
        policy = self.dtype_policy
        layers = [keras.layers.Dense(self.hidden_dim, activation="gelu", dtype=policy)] if self.hidden_dim else []
        return keras.Sequential(layers + [keras.layers.Dense(self.projection_dim, dtype=policy)], name=name)

    def foreground(self, images):
        """The foreground map ``(batch, H, W, 1)`` of images ``(batch, H, W, 3)`` in [0, 1]."""
        images = ops.cast(images, self.compute_dtype)
        # The median of a sparse grid of about 24 x 24 pixels: as good an estimate, and ~10x cheaper to sort.
        stride = max(1, self.image_size // 24)
        background = ops.median(images[:, ::stride, ::stride], axis=(1, 2), keepdims=True)  # (B, 1, 1, 3)
        contrast = ops.sqrt(ops.sum(ops.square(images - background), axis=-1, keepdims=True) + 1e-6)
        return ops.sigmoid(self.sharpness * (contrast - self.threshold))  # (B, H, W, 1)

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        # [start-colour-shape-call]
        foreground = self.foreground(images)
        shape_patches = self.patches(foreground)  # (B, N, P*P)
        weights = ops.expand_dims(shape_patches, -1)  # (B, N, P*P, 1)
        pixels = ops.reshape(self.patches(images), (-1, self.num_patches, self.patch_size**2, 3))  # (B, N, P*P, 3)
        colour = ops.sum(weights * pixels, axis=2) / (ops.sum(weights, axis=2) + 1.0)  # (B, N, 3)
        x = self.shape_projection(shape_patches) + self.colour_projection(colour)  # (B, N, d)
        # [end-colour-shape-call]
        positions = sinusoidal_encoding_2d(self.grid[0], self.grid[1], self.projection_dim)  # (N, d)
        return x + ops.cast(positions, x.dtype)[None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"image_size": self.image_size, "patch_size": self.patch_size,
                       "projection_dim": self.projection_dim, "threshold": self.threshold,
                       "sharpness": self.sharpness, "hidden_dim": self.hidden_dim})
        return config
