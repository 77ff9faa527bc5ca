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
    backbone: str = "scratch"        # "scratch", or a pretrained "vit-b16" / "vit-b32" (vit extra)
    freeze_backbone: bool = True     # keep a pretrained backbone's weights fixed
    batch_size: int = 64             # captions per step
    epochs: int = 8                  # passes over the training images (one reference each)
    warmup_steps: int = 300          # learning-rate warm-up (TransformerSchedule)
    lr_scale: float = 1.0            # multiplies the schedule's learning rate
    label_smoothing: float = 0.0     # ε of the masked cross-entropy
    mixed_precision: bool = False    # bfloat16 on GPUs that have it, else float16
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
    "quick": TrainConfig(),
    "gpu": TrainConfig(num_train=40000, num_val=1000, image_size=128, max_objects=3, patch_size=16,
                       model_dim=256, num_heads=8, encoder_layers=4, decoder_layers=3, mlp_dim=1024,
                       batch_size=128, epochs=20, warmup_steps=1000, mixed_precision=True, jit_compile="on"),
}


def profile(name, **overrides):
    """The named profile's TrainConfig with ``overrides`` applied (unknown names are an error)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return TrainConfig.from_dict({**dataclasses.asdict(PROFILES[name]), **overrides})
