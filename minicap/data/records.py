"""A captioning data set on disk: image paths and their reference captions (chapter 5)."""
import dataclasses

from minicap.data.images import ImageFiles, load_images

__all__ = ["CaptionSet"]


@dataclasses.dataclass
class CaptionSet:
    """Images on disk and their reference captions, as the real data set loaders return them.

    Attributes:
        paths: one image file path per image.
        captions: one list of reference captions per image (5 for Flickr8k and COCO).
        split: which split (``"train"``, ``"dev"``/``"val"``, ``"test"``, ...).
        name: the data set's name.
        image_size: the size :attr:`images` resizes to (an int or ``(height, width)``), or None.
    """

    paths: list
    captions: list
    split: str
    name: str
    image_size: object = None

    @property
    def images(self):
        """The images as an :class:`~minicap.data.images.ImageFiles` (read from disk when indexed)."""
        if self.image_size is None:
            raise ValueError(f"this {self.name} {self.split} CaptionSet has no image_size; load it with image_size=...")
        return ImageFiles(self.paths, self.image_size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index], self.captions[index]

    def load_images(self, image_size):
        """All images as a uint8 ``(N, height, width, 3)`` array (mind the memory for big sets)."""
        return load_images(self.paths, image_size)
