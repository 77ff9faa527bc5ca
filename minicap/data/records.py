"""A captioning data set on disk: image paths and their reference captions (chapter 5)."""
import dataclasses

from minicap.data.images import load_images


@dataclasses.dataclass
class CaptionSet:
    """Images on disk and their reference captions, as the real data set loaders return them.

    Attributes:
        paths: one image file path per image.
        captions: one list of reference captions per image (5 for Flickr8k and COCO).
        split: which split (``"train"``, ``"dev"``/``"val"``, ``"test"``, ...).
        name: the data set's name.
    """

    paths: list
    captions: list
    split: str
    name: str

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index], self.captions[index]

    def load_images(self, image_size):
        """All images as a uint8 ``(N, height, width, 3)`` array (mind the memory for big sets)."""
        return load_images(self.paths, image_size)
