"""Tests for minicap.bench: the FLOP count, the stock-Keras build, the peak, and the JSON of ``minicap bench``."""
import json

import keras
import numpy as np
import pytest
from keras import ops

from minicap import bench
from minicap.cli import main
from minicap.model import CaptionConfig, CaptionModel


def _tiny(**overrides):
    values = dict(vocab_size=10, max_length=4, image_size=16, patch_size=8, model_dim=8, num_heads=2,
                  encoder_layers=1, decoder_layers=1, mlp_dim=16, dropout=0.0)
    return CaptionConfig(**{**values, **overrides})


def test_forward_flops_match_a_hand_count():
    # 4 patches of 8*8*3 = 192 values; encoder width 12, MLP 24; decoder width 8, MLP 16; 4 tokens; 10 words.
    config = _tiny(encoder_dim=12, encoder_mlp_dim=24)
    patch_embedding = 2 * 4 * 192 * 12                       # 18,432
    encoder_attention = 4 * (2 * 4 * 12 * 12) + 2 * (2 * 4 * 4 * 12)  # Q, K, V, O + QKᵀ + AV: 4,608 + 768
    encoder_mlp = 2 * (2 * 4 * 12 * 24)                      # 4,608
    projection = 2 * 4 * 12 * 8                              # 768
    self_attention = 4 * (2 * 4 * 8 * 8) + 2 * (2 * 4 * 4 * 8)   # 2,048 + 512
    cross_attention = 2 * (2 * 4 * 8 * 8) + 2 * (2 * 4 * 8 * 8) + 2 * (2 * 4 * 4 * 8)  # Q, O + K, V of patches
    decoder_mlp = 2 * (2 * 4 * 8 * 16)                       # 2,048
    head = 2 * 4 * 8 * 10                                    # 640
    expected = (patch_embedding + encoder_attention + encoder_mlp + projection + self_attention
                + cross_attention + decoder_mlp + head)
    assert expected == 36_992
    assert bench.forward_flops(config) == expected
    assert bench.training_flops(config) == 3 * expected
    # Without a wider encoder there is no projection, and two tokens fewer cost less.
    assert bench.forward_flops(_tiny()) < bench.forward_flops(_tiny(), length=6)
    with pytest.raises(ValueError, match="scratch encoder only, got backbone 'vit-b32'"):
        bench.forward_flops(_tiny(backbone="vit-b32", image_size=32))


def test_vit_b32_config_is_the_issues():
    config = bench.vit_b32_config()
    assert (config.image_size, config.patch_size, config.num_patches) == (224, 32, 49)
    assert (config.encoder_layers, config.encoder_width, config.encoder_num_heads, config.encoder_mlp_width) == (
        12, 768, 12, 3072)
    assert (config.decoder_layers, config.model_dim, config.num_heads) == (4, 512, 8)
    assert (config.max_length, config.vocab_size) == (24, 8000)
    # About 29 GFLOPs per image and training step, 86% of them in the encoder.
    assert 29e9 < bench.training_flops(config) < 30e9


@pytest.mark.parametrize("overrides", [dict(), dict(encoder_dim=12, encoder_heads=3, encoder_mlp_dim=24,
                                                    decoder_layers=2, dropout=0.1)])
def test_stock_build_has_the_same_parameters_and_output_shape(overrides):
    config = _tiny(**overrides)
    minicap, stock = CaptionModel(config), bench.build_stock_model(config)
    assert stock.count_params() == minicap.count_params()
    assert all("minicap" not in type(layer).__module__ for layer in stock.layers)  # stock layers only
    (images, tokens), targets = bench.random_batch(config, 3)
    logits = stock((images, tokens))
    assert tuple(logits.shape) == (3, 4, 10)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert tuple(targets.shape) == (3, 4)


def _copy_weights(minicap, stock):
    """Give ``stock`` minicap's weights (reshaped where stock layers store them per head); return how many."""
    pairs = []

    def dense(source, target):
        pairs.extend([(source.kernel, target.kernel), (source.bias, target.bias)])

    def norm(source, name):
        target = stock.get_layer(name)
        pairs.extend([(source.gamma, target.gamma), (source.beta, target.beta)])

    def attention(source, name):
        target = stock.get_layer(name)
        for mine, theirs in ((source.query_dense, target._query_dense), (source.key_dense, target._key_dense),
                             (source.value_dense, target._value_dense), (source.output_dense, target._output_dense)):
            dense(mine, theirs)

    def feed_forward(source, name):
        dense(source.hidden, stock.get_layer(f"{name}_hidden"))
        dense(source.projection, stock.get_layer(f"{name}_projection"))

    encoder, decoder = minicap.encoder, minicap.decoder
    dense(encoder.patch_encoder.projection, stock.get_layer("patch_projection"))
    pairs.append((encoder.patch_encoder.position_embedding.embeddings, stock.get_layer("patch_positions").embeddings))
    for i, layer in enumerate(encoder.encoder_layers):
        norm(layer.attention_norm, f"encoder_{i}_attention_norm")
        attention(layer.attention, f"encoder_{i}_attention")
        norm(layer.feed_forward_norm, f"encoder_{i}_feed_forward_norm")
        feed_forward(layer.feed_forward, f"encoder_{i}_feed_forward")
    norm(encoder.final_norm, "encoder_final_norm")
    if minicap.encoder_projection is not None:
        dense(minicap.encoder_projection, stock.get_layer("encoder_projection"))
    pairs.append((decoder.token_embedding.embeddings, stock.get_layer("token_embedding").embeddings))
    for i, layer in enumerate(decoder.decoder_layers):
        for part in ("self_attention", "cross_attention"):
            norm(getattr(layer, f"{part}_norm"), f"decoder_{i}_{part}_norm")
            attention(getattr(layer, part), f"decoder_{i}_{part}")
        norm(layer.feed_forward_norm, f"decoder_{i}_feed_forward_norm")
        feed_forward(layer.feed_forward, f"decoder_{i}_feed_forward")
    norm(decoder.final_norm, "decoder_final_norm")
    dense(minicap.head, stock.get_layer("head"))
    for source, target in pairs:
        target.assign(ops.reshape(source, target.shape))
    return len(pairs)


def test_stock_build_computes_what_caption_model_computes():
    config = _tiny(encoder_dim=12, encoder_heads=3, encoder_mlp_dim=24, decoder_layers=2)
    minicap, stock = CaptionModel(config), bench.build_stock_model(config)
    assert _copy_weights(minicap, stock) == len(stock.weights)  # every stock weight has its minicap twin
    (images, tokens), _ = bench.random_batch(config, 3)
    np.testing.assert_allclose(ops.convert_to_numpy(stock((images, tokens))),
                               ops.convert_to_numpy(minicap((images, tokens))), atol=1e-4)


def test_quick_config_follows_the_quick_profile():
    config = bench.quick_config(30, max_length=20)
    assert (config.image_size, config.patch_size, config.model_dim, config.vocab_size, config.max_length) == (
        72, 24, 64, 30, 20)


def test_peak_flops_from_flag_table_or_measurement():
    h100 = {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3"}
    assert bench.peak_flops(h100) == (989e12, "table: H100 dense 16-bit peak")
    assert bench.peak_flops({"kind": "gpu", "name": "Tesla T4"})[0] == 65e12
    assert bench.peak_flops({"kind": "cpu", "name": "x86_64"}, peak_tflops=2.5) == (2.5e12, "given (--peak-tflops)")
    measured, source = bench.peak_flops({"kind": "cpu", "name": "x86_64"})
    assert measured > 1e8 and source.startswith("measured: best float32")
    with pytest.raises(ValueError, match="peak_tflops must be positive, got -1"):
        bench.peak_flops({"kind": "cpu", "name": "x86_64"}, peak_tflops=-1)


def test_precision_policy():
    assert bench.resolve_policy("auto", {"kind": "cpu"}) == "float32"
    assert bench.resolve_policy("auto", {"kind": "gpu"}) == "mixed_bfloat16"  # no pre-Ampere GPU here
    assert bench.resolve_policy("float32", {"kind": "gpu"}) == "float32"
    with pytest.raises(ValueError, match="precision must be 'auto', 'float32' or 'mixed', got 'fp8'"):
        bench.resolve_policy("fp8", {"kind": "cpu"})


def test_run_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        bench.run(quick=True, steps=0)
    with pytest.raises(ValueError, match="jit must be 'auto', 'on' or 'off', got 'yes'"):
        bench.run(quick=True, jit="yes")


def test_bench_command_writes_the_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = main(["bench", "--quick", "--output", str(path), "--batch-sizes", "8", "--steps", "1",
                   "--repeats", "1", "--decode-batch", "4", "--peak-tflops", "1"])
    assert status in (None, 0)
    assert "minicap" in capsys.readouterr().out  # the table
    report = json.loads(path.read_text())
    assert report["backend"] == keras.backend.backend() and report["quick"] is True
    assert report["peak_flops"] == 1e12 and report["dtype_policy"] == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    common = {"figure", "config", "backend", "device", "dtype_policy", "batch_size", "peak_flops"}
    records = report["records"]
    assert all(common <= set(record) for record in records)
    training = [r for r in records if r["figure"] == "training"]
    assert [(r["model"], r["batch_size"]) for r in training] == [("minicap", 8), ("stock", 8)]
    for record in training:
        assert record["steps"] == 1 and isinstance(record["jit_compile"], bool)
        expected_loop = "device-resident state" if keras.backend.backend() == "jax" else "train_on_batch"
        assert record["step_loop"] == expected_loop
        assert record["images_per_second"] == pytest.approx(record["batch_size"] / record["seconds_per_step"])
        assert record["mfu"] == pytest.approx(
            record["training_flops_per_image"] * record["images_per_second"] / 1e12)
        assert record["minicap_over_stock"] > 0
    assert training[0]["parameters"] == training[1]["parameters"]
    decoding = [r for r in records if r["figure"] == "decoding"]
    assert [(r["method"], r["cached"], r["beam_width"]) for r in decoding] == [
        ("greedy", True, 1), ("greedy", False, 1), ("beam", True, 5)]
    assert all(r["batch_size"] == 4 and r["max_length"] == 20 and r["captions_per_second"] > 0 for r in decoding)
    assert decoding[0]["cached_over_naive"] == pytest.approx(decoding[1]["seconds"] / decoding[0]["seconds"])
    pipeline = [r for r in records if r["figure"] == "input_pipeline"]
    assert len(pipeline) == 1 and pipeline[0]["images_per_second"] > 0
    if report["device"]["kind"] == "cpu":
        assert [s["config"] for s in report["skipped"]] == ["vit-b32"]


def test_bench_command_rejects_bad_batch_sizes(capsys):
    assert main(["bench", "--quick", "--batch-sizes", "8,x"]) == 2
    assert "batch sizes must be positive integers separated by commas, got '8,x'" in capsys.readouterr().err
