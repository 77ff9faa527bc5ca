"""Analytic FLOPs of minicap's models (matmuls, 2·m·n·k each), for MFU and for estimates: the scratch encoder, the
decoder, a training step, and the configurations the benchmarks time (the quick profile's, ViT-B/32 end to end).

The encoder's sizes are its ``EncoderSpec`` (``CaptionConfig.encoder_spec()``), resolved once there.
"""
from minicap.config import CaptionConfig, model_config, profile


def vit_b32_config(dropout=0.0):
    """The end-to-end "ViT-B/32" captioner: a 12-layer encoder of width 768 (12 heads, MLP 3072) over
    the 7 × 7 patches of a 224-pixel image, a 4-layer decoder of width 512 (8 heads, MLP 2048),
    24 tokens and 8,000 words."""
    return CaptionConfig(vocab_size=8000, max_length=24, image_size=224, patch_size=32, model_dim=512,
                         num_heads=8, encoder_layers=12, decoder_layers=4, mlp_dim=2048, dropout=dropout,
                         encoder_dim=768, encoder_heads=12, encoder_mlp_dim=3072)


def quick_config(vocab_size, max_length=None, dropout=None, settings=None):
    """The quick training profile's model (or that of ``settings``, a ``TrainConfig``) for a vocabulary
    of ``vocab_size`` words, with ViT's linear patch embedding: the benchmark compares Transformers with
    their stock-Keras builds, and a colour-shape stem (a prior for the shapes scenes) has no stock
    counterpart."""
    settings = settings or profile("quick")
    config = model_config(settings, vocab_size, pad_id=0)
    changes = {"max_length": max_length, "dropout": dropout, "patch_stem": "linear",
               "output_positions": False}
    return CaptionConfig.from_dict({**config.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


def _attention_flops(queries, keys, width):
    """Q, O projections of the queries, K, V projections of the keys, QKᵀ and AV."""
    return 2 * (2 * queries * width * width) + 2 * (2 * keys * width * width) + 2 * (2 * queries * keys * width)


def _feed_forward_flops(positions, width, hidden):
    return 2 * (2 * positions * width * hidden)


def encoder_flops(config):
    """Matmul FLOPs (2·m·n·k each) of one image through the encoder of ``config`` (a scratch ViT or a pretrained
    ViT-B, read from its ``EncoderSpec``): the linear patch embedding, then per layer the Q, K, V, O
    projections, the attention scores and weighted sum, and the MLP, over the patches (and a pretrained ViT's
    class token). A convolutional or colour-shape stem is counted as the linear one."""
    spec = config.encoder_spec()
    tokens = spec.num_patches + (spec.kind == "pretrained")  # a pretrained ViT's class token
    layer = _attention_flops(tokens, tokens, spec.width) + _feed_forward_flops(tokens, spec.width, spec.mlp_dim)
    return 2 * spec.num_patches * spec.patch_size ** 2 * 3 * spec.width + spec.num_layers * layer


def decoder_flops(config, length=None):
    """Matmul FLOPs of one caption of ``length`` tokens (default ``config.max_length``) from the
    encoder's patch vectors on: the projection to the decoder width if any; per decoder layer the
    self-attention (all ``length`` × ``length`` scores even though half are masked), the
    cross-attention (the K and V projections of the ``num_patches`` vectors included), the MLP; the
    vocabulary head. What a model trained on cached backbone features computes."""
    tokens = config.max_length if length is None else length
    spec = config.encoder_spec()
    patches, width, dim = spec.num_patches, spec.width, config.model_dim
    flops = 2 * patches * width * dim if width != dim else 0
    layer = (_attention_flops(tokens, tokens, dim) + _attention_flops(tokens, patches, dim)
             + _feed_forward_flops(tokens, dim, config.mlp_dim))
    return flops + config.decoder_layers * layer + 2 * tokens * dim * config.vocab_size


def forward_flops(config, length=None):
    """Matmul FLOPs (2·m·n·k each) of one image's forward pass through a CaptionModel: ``encoder_flops`` +
    ``decoder_flops``. Not counted: layer norms, softmax, GELU, embeddings lookups, the optimizer (all
    O(params) or O(activations), not matmuls)."""
    return encoder_flops(config) + decoder_flops(config, length)


def training_flops(config, length=None):
    """FLOPs of one image's training step: forward + backward ≈ 3 × forward (the backward pass
    computes two matmuls, for the inputs' and the weights' gradients, per forward matmul)."""
    return 3 * forward_flops(config, length)


