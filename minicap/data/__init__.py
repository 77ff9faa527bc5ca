"""Data sets and input pipelines: shapes scenes (built in), Flickr8k and COCO captions, a folder of
your own captioned images, batches, and the feature cache of a frozen backbone.

Import from the modules, e.g. ``from minicap.data.shapes import make_shapes``; the main names are
re-exported here for convenience.
"""
from minicap.data.coco import load_coco
from minicap.data.faithfulness import CaptionCheck, check_caption, faithfulness_rate
from minicap.data.flickr8k import load_flickr8k
from minicap.data.images import ImageFiles, load_image, load_images
from minicap.data.features import cached_features
from minicap.data.folder import load_caption_folder
from minicap.data.pipeline import CaptionBatches
from minicap.data.records import CaptionSet
from minicap.data.shapes import COLOURS, HELDOUT_PAIRS, SHAPES, Scene, ShapesData, make_shapes
