"""A real, saved ``CaptionModel`` whose next-word probabilities are set by hand, so that beam search provably
writes another caption than greedy decoding (for the commands that load a ``model.keras``).

The model is a *bigram* model: the logits at a position depend only on the token read there, whatever
the image. How: every attention and feed-forward block of its one decoder layer outputs zero, so the
decoder's hidden state is the final layer norm of ``embedding · √d + position``; the embeddings are huge
one-hot vectors (the positions, at most 1 per value, barely move them), so the normed state is a fixed
vector per token, and the vocabulary head is solved so that these vectors map to the chosen logits.

With :data:`BIGRAMS`, greedy decoding writes ``GREEDY`` and beam search (width 2 or more, any length
penalty from 0 to 1) writes ``BEAM``, for every image:

- greedy: [START] → "blue" (0.5) → [END] (0.4): probability 0.2;
- beam: [START] → "a" (0.45) → "red" (0.95) → "circle" (0.95) → [END] (0.95): probability 0.386.
"""
import numpy as np

from minicap.encoder import NORM_EPSILON
from minicap.model import CaptionConfig, CaptionModel
from minicap.text import Tokenizer

GREEDY, BEAM = "blue", "a red circle"
START, END = "[START]", "[END]"
# After the token on the left, the probabilities of the next ones; every other token gets OTHER.
BIGRAMS = {
    START: {"blue": 0.5, "a": 0.45, END: 0.05},
    "blue": {END: 0.4, "square": 0.3, "circle": 0.3},
    "square": {END: 0.95},
    "a": {"red": 0.95},
    "red": {"circle": 0.95},
    "circle": {END: 0.95},
}
OTHER = 1e-4
EMBEDDING = 1e4  # the one-hot embeddings' value: positions move the normed state by about 1 / EMBEDDING


def caption_logits(tokenizer):
    """The planted next-token log-probabilities, ``(vocab, vocab)``: row = the token read."""
    size = len(tokenizer)
    table = np.full((size, size), np.log(OTHER))
    for before, following in BIGRAMS.items():
        for token, probability in following.items():
            table[tokenizer.token_id(before), tokenizer.token_id(token)] = np.log(probability)
    return table


def planted_captioner(image_size=32, patch_size=16):
    """``(model, tokenizer)``: the bigram CaptionModel of :data:`BIGRAMS` and its tokenizer."""
    tokenizer = Tokenizer.fit([BEAM, "blue square"])
    size = len(tokenizer)
    dim = 16  # at least the vocabulary's size, so that the one-hot states are independent
    config = CaptionConfig(vocab_size=size, max_length=8, image_size=image_size, patch_size=patch_size,
                           model_dim=dim, num_heads=2, encoder_layers=0, decoder_layers=1, mlp_dim=dim, dropout=0.0)
    model = CaptionModel(config)
    layer = model.decoder.decoder_layers[0]
    for dense in (layer.self_attention.output_dense, layer.cross_attention.output_dense,
                  layer.feed_forward.projection):
        dense.kernel.assign(np.zeros(dense.kernel.shape, "float32"))
        dense.bias.assign(np.zeros(dense.bias.shape, "float32"))
    embeddings = np.eye(size, dim, dtype="float32") * EMBEDDING / np.sqrt(dim)  # x √dim: EMBEDDING
    model.decoder.token_embedding.embeddings.assign(embeddings)
    # The final layer norm (unit scale, zero offset) of each token's state, positions left out.
    states = embeddings * np.sqrt(dim)
    states = (states - states.mean(-1, keepdims=True)) / np.sqrt(states.var(-1, keepdims=True) + NORM_EPSILON)
    # The head that maps state v to row v of the table: an exact solution, as the states and 1 are independent.
    solution, *_ = np.linalg.lstsq(np.concatenate([states, np.ones((size, 1))], axis=1), caption_logits(tokenizer),
                                   rcond=None)
    model.head.kernel.assign(solution[:-1].astype("float32"))
    model.head.bias.assign(solution[-1].astype("float32"))
    return model, tokenizer


def save_planted_captioner(folder, **sizes):
    """Write the planted model as ``minicap train`` would leave it: ``folder/model.keras`` and ``tokenizer.json``."""
    model, tokenizer = planted_captioner(**sizes)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    tokenizer.save(folder / "tokenizer.json")
    return folder / "model.keras"
