"""Writing captions: greedy decoding, sampling and beam search, with cached keys and values (chapter 6).

A caption is written one token at a time: feed ``[START]``, pick a word from the logits of the last
position, append it, repeat until ``[END]`` or ``max_length``. Re-running the decoder over the whole
prefix at every step costs O(T²) per caption; the decoder's cache keeps each earlier position's keys
and values, so each step only computes the newest position (``model.decode_step``).

Every decoder here has a *naive* twin (``cached=False``) that re-runs the full model on the padded
prefix at every step. The two give the same tokens (tested); the naive one exists to check the cache
and to measure what it saves (``minicap bench``).

Each decoding loop is one ``keras.ops.while_loop`` (it stops early once every caption has ended),
compiled as a whole with the backend's compiler, so no step returns to Python.
"""
import keras
import numpy as np
from keras import ops

__all__ = ["Generator", "caption"]


def _compile(function, model):
    """Compile ``function`` with the backend's JIT; PyTorch runs it eagerly.

    Under JAX the model's weights are passed in as arguments (through a ``StatelessScope``) rather
    than captured as constants, so a generator built before training sees the trained weights.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        variables = model.variables

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in variables], *args)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # each Generator compiles its own loops: retracing is expected
        return tf.function(function)
    return function


def _check_images(model, images):
    """``images`` as a tensor, checked: float images ``(batch, size, size, 3)``, or (with a pretrained
    backbone) its cached features ``(batch, num_patches, feature_dim)``."""
    images = ops.convert_to_tensor(images)
    size = model.config.image_size
    if len(images.shape) == 3 and model.is_features(images):
        return images
    if len(images.shape) != 4 or tuple(images.shape[1:]) != (size, size, 3):
        raise ValueError(
            f"expected images of shape (batch, {size}, {size}, 3) for this model, got {tuple(images.shape)}"
        )
    dtype = keras.backend.standardize_dtype(images.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(f"expected float images in [0, 1], got dtype {dtype}; divide uint8 images by 255")
    return images


def _start_tokens(batch, max_length, start_id, pad_id):
    tokens = np.full((batch, max_length + 1), pad_id, dtype="int32")
    tokens[:, 0] = start_id
    return ops.convert_to_tensor(tokens)


def _next_logits(model, images, tokens, cache, step, cached, forbidden, encoded=None):
    """Float32 logits ``(batch, vocab)`` for the position after ``tokens[:, step]``, and the new cache.

    ``forbidden`` (vocab,) is added to the logits: -1e9 on [PAD] and [START], which are never written.
    The naive path re-runs the whole model, encoder included, unless ``encoded`` (the encoder's output,
    computed once) is given: then it re-runs the decoder only.
    """
    if cached:
        token = ops.slice(tokens, (0, step), (ops.shape(tokens)[0], 1))  # (B, 1)
        logits, cache = model.decode_step(token, cache, step)
        logits = logits[:, -1]
    else:  # naive: the full model over the whole padded prefix; padding after `step` is masked
        length = ops.shape(tokens)[1] - 1
        if encoded is None:
            logits = model((images, tokens[:, :length]), training=False)  # (B, L, V)
        else:
            logits = model.head(model.decoder(tokens[:, :length], encoded, training=False))
        logits = ops.take(logits, step, axis=1)  # (B, V)
    return ops.cast(logits, "float32") + forbidden, cache


class Generator:
    """Compiled greedy, sampling and beam-search decoders for one ``CaptionModel``.

    Args:
        model: a ``CaptionModel``.
        start_id, end_id, pad_id: the tokenizer's special ids.
        max_length: most tokens to generate after ``[START]``.

    Each method takes float images ``(batch, H, W, 3)`` in [0, 1] (or a pretrained backbone's cached
    features ``(batch, num_patches, feature_dim)``) and returns int32 tokens ``(batch, max_length + 1)``:
    ``[START]``, the caption, ``[END]`` if it ended, then padding.

    Example:
        >>> from minicap.model import CaptionConfig, CaptionModel
        >>> config = CaptionConfig(vocab_size=30, max_length=6, image_size=32, patch_size=8,
        ...                        model_dim=32, num_heads=2, mlp_dim=64)
        >>> model = CaptionModel(config)
        >>> generator = Generator(model, start_id=1, end_id=2, pad_id=0)
        >>> images = np.zeros((2, 32, 32, 3), "float32")
        >>> generator.greedy(images).shape  # [START] and up to 6 words
        (2, 7)
    """

    def __init__(self, model, start_id, end_id, pad_id=0, max_length=None):
        self.model = model
        self.start_id, self.end_id, self.pad_id = start_id, end_id, pad_id
        self.max_length = max_length or model.config.max_length
        if self.max_length > model.config.max_length:
            raise ValueError(f"max_length {self.max_length} exceeds the model's {model.config.max_length} positions")
        self._compiled = {}
        forbidden = np.zeros(model.config.vocab_size, "float32")
        forbidden[[pad_id, start_id]] = -1e9
        self.forbidden = ops.convert_to_tensor(forbidden)

    @classmethod
    def from_tokenizer(cls, model, tokenizer, max_length=None):
        """The generator of ``model`` with the special tokens of ``tokenizer`` (a :class:`minicap.text.Tokenizer`):
        ``Generator(model, tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id)``."""
        return cls(model, tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id, max_length)

    def _run(self, key, function, *args):
        if key not in self._compiled:
            self._compiled[key] = _compile(function, self.model)
        return ops.convert_to_numpy(self._compiled[key](*args)).astype("int32")

    # Greedy decoding and sampling share one loop; they differ in how a word is picked.
    def _decode_loop(self, images, noise, cached, temperature, top_k, reencode=True):
        model, batch = self.model, ops.shape(images)[0]
        cache = model.init_cache(model.encode(images, training=False), self.max_length) if cached else {}
        encoded = None if cached or reencode else model.encode(images, training=False)
        tokens = _start_tokens(batch, self.max_length, self.start_id, self.pad_id)
        done = ops.zeros((batch,), "bool")

        def keep_going(step, tokens, done, cache):
            return ops.logical_and(step < self.max_length, ops.logical_not(ops.all(done)))

        def one_step(step, tokens, done, cache):
            logits, cache = _next_logits(model, images, tokens, cache, step, cached, self.forbidden, encoded)
            if noise is None:
                word = ops.argmax(logits, axis=-1)
            else:  # Gumbel-max: argmax(logits / T + Gumbel noise) samples softmax(logits / T)
                logits = logits / temperature
                if top_k:
                    kth = ops.top_k(logits, top_k)[0][:, -1:]
                    logits = ops.where(logits < kth, -1e9, logits)
                word = ops.argmax(logits + ops.take(noise, step, axis=0), axis=-1)
            word = ops.where(done, self.pad_id, ops.cast(word, "int32"))
            tokens = ops.slice_update(tokens, (0, step + 1), word[:, None])
            done = ops.logical_or(done, ops.equal(word, self.end_id))
            return step + 1, tokens, done, cache

        _, tokens, _, _ = ops.while_loop(keep_going, one_step, (0, tokens, done, cache))
        return tokens

    def decode(self, images, method="greedy", **options):
        """Token ids ``(batch, max_length + 1)`` written by ``method``: ``"greedy"`` (:meth:`greedy`),
        ``"beam"`` (:meth:`beam_search`: ``beam_width``, ``length_penalty``) or ``"sample"`` (:meth:`sample`:
        ``temperature``, ``top_k``, ``seed``), with its ``options``. The one entry point of evaluation,
        the command line and the attention explorer."""
        methods = {"greedy": self.greedy, "beam": self.beam_search, "sample": self.sample}
        if method not in methods:
            raise ValueError(f"unknown decoding method {method!r}; choose one of {sorted(methods)}")
        return methods[method](images, **options)

    def greedy(self, images, cached=True, reencode=True):
        """The most likely word at every step: images ``(batch, size, size, 3)`` -> token ids
        ``(batch, max_length + 1)``, the start token first, padding after the end token.

        ``cached=False`` re-runs the model over the whole prefix at every step (the naive decoder, to
        check and measure the cache); with ``reencode=False`` that naive decoder computes the encoder's
        output once and re-runs only the decoder, so the two costs can be told apart.
        """
        images = _check_images(self.model, images)
        return self._run(("greedy", cached, cached or reencode),
                         lambda x: self._decode_loop(x, None, cached, 1.0, 0, reencode), images)

    def sample(self, images, temperature=1.0, top_k=0, seed=0, cached=True):
        """A word drawn from softmax(logits / temperature), among the ``top_k`` likeliest (0: all): images
        ``(batch, size, size, 3)`` -> token ids ``(batch, max_length + 1)``, as :meth:`greedy`; ``seed`` fixes the
        draws."""
        images = _check_images(self.model, images)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}; use greedy() for temperature 0")
        vocab = self.model.config.vocab_size
        if top_k < 0 or top_k > vocab:
            raise ValueError(f"top_k must be in [0, {vocab}], got {top_k}")
        uniform = np.random.default_rng(seed).uniform(1e-9, 1.0, (self.max_length, images.shape[0], vocab))
        noise = ops.convert_to_tensor(-np.log(-np.log(uniform)), "float32")  # (L, B, V) Gumbel noise
        return self._run(("sample", cached, float(temperature), int(top_k)),
                         lambda x, n: self._decode_loop(x, n, cached, temperature, top_k), images, noise)

    def beam_search(self, images, beam_width=5, length_penalty=0.6, cached=True):
        """Keep the ``beam_width`` likeliest prefixes; return the best finished caption per image: images
        ``(batch, size, size, 3)`` -> token ids ``(batch, max_length + 1)``, as :meth:`greedy`.

        Captions are ranked by total log-probability divided by ((5 + length) / 6) ** length_penalty
        (Wu et al., 2016): 0 ranks by raw probability, which favours short captions.
        """
        images = _check_images(self.model, images)
        if beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {beam_width}")
        return self._run(("beam", cached, int(beam_width), float(length_penalty)),
                         lambda x: self._beam_loop(x, beam_width, length_penalty, cached), images)

    def _beam_loop(self, images, beams, length_penalty, cached):
        model, batch = self.model, ops.shape(images)[0]
        vocab = model.config.vocab_size
        images = ops.repeat(images, beams, axis=0)  # (B*K, H, W, 3): beam k of image b at b*K + k
        cache = model.init_cache(model.encode(images, training=False), self.max_length) if cached else {}
        tokens = _start_tokens(batch * beams, self.max_length, self.start_id, self.pad_id)
        # Only the first beam is alive at the start, so the first step does not pick K copies.
        scores = ops.convert_to_tensor(np.tile([0.0] + [-1e9] * (beams - 1), (batch, 1)), "float32")
        done = ops.zeros((batch, beams), "bool")
        # A finished beam may only be extended by padding, at no cost.
        finished_row = ops.convert_to_tensor(np.where(np.arange(vocab) == self.pad_id, 0.0, -1e9), "float32")

        def keep_going(step, tokens, scores, done, cache):
            return ops.logical_and(step < self.max_length, ops.logical_not(ops.all(done)))

        def one_step(step, tokens, scores, done, cache):
            logits, cache = _next_logits(model, images, tokens, cache, step, cached, self.forbidden)
            log_probs = ops.log_softmax(logits, axis=-1)
            log_probs = ops.reshape(log_probs, (batch, beams, vocab))
            log_probs = ops.where(done[..., None], finished_row, log_probs)
            candidates = ops.reshape(scores[..., None] + log_probs, (batch, beams * vocab))
            scores, best = ops.top_k(candidates, beams)  # (B, K)
            parent, word = best // vocab, ops.cast(best % vocab, "int32")
            rows = ops.reshape(parent + ops.arange(batch)[:, None] * beams, (-1,))  # (B*K,)
            tokens = ops.slice_update(ops.take(tokens, rows, axis=0), (0, step + 1), ops.reshape(word, (-1, 1)))
            cache = keras.tree.map_structure(lambda leaf: ops.take(leaf, rows, axis=0), cache)
            done = ops.logical_or(ops.take_along_axis(done, parent, axis=1), ops.equal(word, self.end_id))
            return step + 1, tokens, scores, done, cache

        _, tokens, scores, _, _ = ops.while_loop(keep_going, one_step, (0, tokens, scores, done, cache))
        tokens = ops.reshape(tokens, (batch, beams, -1))
        generated = ops.sum(ops.cast(ops.not_equal(tokens[:, :, 1:], self.pad_id), "float32"), axis=-1)
        normalised = scores / ops.power((5.0 + generated) / 6.0, length_penalty)
        best = ops.argmax(normalised, axis=-1)[:, None, None]  # (B, 1, 1)
        return ops.take_along_axis(tokens, best, axis=1)[:, 0]


def caption(model, tokenizer, images, method="greedy", **options):
    """Captions (strings) for float images ``(batch, H, W, 3)``, written by ``method`` (see ``Generator.decode``).

    Example:
        >>> from minicap.model import CaptionConfig, CaptionModel
        >>> from minicap.text import Tokenizer
        >>> tokenizer = Tokenizer.fit(["a red circle", "a blue square"])
        >>> config = CaptionConfig(vocab_size=len(tokenizer), max_length=6, image_size=32,
        ...                        patch_size=8, model_dim=32, num_heads=2, mlp_dim=64)
        >>> model = CaptionModel(config)  # untrained: it writes any words of its vocabulary
        >>> images = np.zeros((2, 32, 32, 3), "float32")
        >>> captions = caption(model, tokenizer, images, method="beam", beam_width=3)
        >>> len(captions), all(isinstance(text, str) for text in captions)
        (2, True)
    """
    generator = Generator.from_tokenizer(model, tokenizer)
    return tokenizer.decode_batch(generator.decode(images, method, **options))
