"""Tests for the benchmarks of tools/bench (device, flops, stock, training, decoding, pipeline, faithfulness,
report, suite): the FLOP count, the stock-Keras build, the peak, the training-run figures (XLA per backend, feature
cache, time to 95% faithfulness) and the JSON of ``python -m tools.bench``."""
import json
import time

import keras
import numpy as np
import pytest
from keras import ops

from minicap import training
from minicap.config import model_config, profile
from tools.bench import device as bench_device
from tools.bench import faithfulness as bench_faithfulness
from tools.bench import flops
from tools.bench import report as bench_report
from tools.bench import stock as bench_stock
from tools.bench import suite as bench
from tools.bench import training as bench_train
from minicap.data.shapes import make_shapes
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
    assert flops.forward_flops(config) == expected
    assert flops.encoder_flops(config) == patch_embedding + encoder_attention + encoder_mlp
    assert flops.decoder_flops(config) == expected - flops.encoder_flops(config)  # projection on
    assert flops.training_flops(config) == 3 * expected
    # Without a wider encoder there is no projection, and two tokens fewer cost less.
    assert flops.forward_flops(_tiny()) < flops.forward_flops(_tiny(), length=6)
    # A pretrained ViT-B/32 on 32-pixel images: 1 patch and the class token, 12 layers of width 768.
    vit = _tiny(backbone="vit-b32", image_size=32)
    tokens, width, hidden = 2, 768, 3072
    layer = 4 * (2 * tokens * width * width) + 2 * (2 * tokens * tokens * width) + 2 * (2 * tokens * width * hidden)
    assert flops.encoder_flops(vit) == 2 * 1 * 32 * 32 * 3 * width + 12 * layer


def test_vit_b32_config_is_the_article_model():
    config = flops.vit_b32_config()
    assert (config.image_size, config.patch_size, config.num_patches) == (224, 32, 49)
    assert (config.encoder_layers, config.encoder_dim, config.encoder_heads, config.encoder_mlp_dim) == (
        12, 768, 12, 3072)
    assert (config.decoder_layers, config.model_dim, config.num_heads) == (4, 512, 8)
    assert (config.max_length, config.vocab_size) == (24, 8000)
    # About 29 GFLOPs per image and training step, 86% of them in the encoder.
    assert 29e9 < flops.training_flops(config) < 30e9


@pytest.mark.parametrize("overrides", [dict(), dict(encoder_dim=12, encoder_heads=3, encoder_mlp_dim=24,
                                                    decoder_layers=2, dropout=0.1)])
def test_stock_build_has_the_same_parameters_and_output_shape(overrides):
    config = _tiny(**overrides)
    minicap, stock = CaptionModel(config), bench_stock.build_stock_model(config)
    assert stock.count_params() == minicap.count_params()
    assert all("minicap" not in type(layer).__module__ for layer in stock.layers)  # stock layers only
    (images, tokens), targets = bench_stock.random_batch(config, 3)
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
    minicap, stock = CaptionModel(config), bench_stock.build_stock_model(config)
    assert _copy_weights(minicap, stock) == len(stock.weights)  # every stock weight has its minicap twin
    (images, tokens), _ = bench_stock.random_batch(config, 3)
    np.testing.assert_allclose(ops.convert_to_numpy(stock((images, tokens))),
                               ops.convert_to_numpy(minicap((images, tokens))), atol=1e-4)


def test_quick_config_follows_the_quick_profile():
    model = profile("quick").model
    config = flops.quick_config(30, max_length=20)
    assert (config.image_size, config.patch_size, config.model_dim, config.encoder_layers, config.vocab_size,
            config.max_length) == (model.image_size, model.patch_size, model.model_dim, model.encoder_layers, 30, 20)
    assert (config.patch_stem, config.output_positions) == ("linear", False)  # what stock Keras can build
    settings = profile("quick", model_dim=32, num_heads=4)
    assert flops.quick_config(30, settings=settings).model_dim == 32


def test_peak_flops_from_flag_table_or_measurement():
    h100 = {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3"}
    assert bench_device.peak_flops(h100) == (989e12, "table: H100 dense 16-bit peak")
    assert bench_device.peak_flops({"kind": "gpu", "name": "Tesla T4"})[0] == 65e12
    cpu = {"kind": "cpu", "name": "x86_64"}
    assert bench_device.peak_flops(cpu, peak_tflops=2.5) == (2.5e12, "given (--peak-tflops)")
    measured, source = bench_device.peak_flops(cpu)
    assert measured > 1e8 and source.startswith("measured: best float32")
    with pytest.raises(ValueError, match="peak_tflops must be positive, got -1"):
        bench_device.peak_flops(cpu, peak_tflops=-1)


def test_precision_policy():
    assert bench_device.resolve_policy("auto", {"kind": "cpu"}) == "float32"
    assert bench_device.resolve_policy("auto", {"kind": "gpu"}) == "mixed_bfloat16"  # no pre-Ampere GPU here
    assert bench_device.resolve_policy("float32", {"kind": "gpu"}) == "float32"
    with pytest.raises(ValueError, match="precision must be 'auto', 'float32' or 'mixed', got 'fp8'"):
        bench_device.resolve_policy("fp8", {"kind": "cpu"})


def test_run_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        bench.run(quick=True, steps=0)
    with pytest.raises(ValueError, match="jit must be 'auto', 'on' or 'off', got 'yes'"):
        bench.run(quick=True, jit="yes")


@pytest.mark.single_backend  # the report's logic, and the other backend in a subprocess
def test_bench_command_writes_the_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    # A small quick profile, and no XLA but for the one figure that times the default setting: the report's
    # logic, not its speed (the test of the figures at full size is `python -m tools.bench` itself).
    small = dict(batch_size=16, model_dim=16, mlp_dim=32, encoder_layers=1, decoder_layers=1, image_size=24,
                 patch_size=12, jit_compile="off")
    backend = keras.backend.backend()
    other = "jax" if backend != "jax" else "tensorflow"  # its step runs in a subprocess of its own
    status = bench.main(["--quick", "--output", str(path), "--batch-sizes", "8", "--steps", "1",
                   "--repeats", "1", "--decode-batch", "4", "--peak-tflops", "1", "--jit", "off",
                   "--backends", f"{backend},{other}", *[f"--set={name}={value}" for name, value in small.items()]])
    assert status in (None, 0)
    table = capsys.readouterr().out
    for title in ("Quick profile's training step", "Input pipeline", "Time to 95% faithfulness",
                  "minicap against the same model from stock Keras"):
        assert title in table
    report = json.loads(path.read_text())
    assert report["backend"] == backend and report["quick"] is True and report["backends"] == [backend, other]
    assert report["overrides"] == small
    assert report["peak_flops"] == 1e12 and report["dtype_policy"] == "float32"
    assert report["jit"] == "off" and report["jit_compile"] is False
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    common = {"figure", "config", "backend", "device", "dtype_policy", "batch_size", "peak_flops"}
    records = report["records"]
    assert all(common <= set(record) for record in records)

    # The quick profile's step with the default XLA setting (--quick) on each backend, the other's first (from its
    # subprocess), and the pipeline's share of it. XLA is the default on both: JIT_BY_BACKEND.
    steps = [r for r in records if r["figure"] == "training_step"]
    assert [(r["backend"], r["jit"], r["jit_compile"], r["default"]) for r in steps] == [
        (other, "auto", True, True), (backend, "auto", training.resolve_jit_compile("auto"), True)]
    for record in steps:
        assert record["batch_size"] == 16 and record["steps"] == 1  # --set reaches the profile
        assert record["seconds_per_step_repeats"] == [record["seconds_per_step"]] == [record["seconds_per_step_best"]]
        assert record["images_per_second"] == pytest.approx(16 / record["seconds_per_step"])
    # Each backend and XLA setting measured, in milliseconds per step: {"tensorflow": {"xla": ...}, "jax": {...}}.
    assert report["training_step_ms"] == {r["backend"]: {"xla": pytest.approx(1000 * r["seconds_per_step"])}
                                          for r in steps}
    assert set(report["training_step_ms"]) == {"tensorflow", "jax"}
    pipelines = [r for r in records if r["figure"] == "input_pipeline"]  # no ViT-B/32 on the CPU
    assert [r["backend"] for r in pipelines] == [other, backend]
    for pipeline, step in zip(pipelines, steps):
        assert pipeline["config"] == "quick" and pipeline["step_jit"] == step["jit"]
        assert pipeline["share_of_step"] == pytest.approx(pipeline["seconds_per_batch"] / step["seconds_per_step"])
        assert 0 < pipeline["share_of_step"] and pipeline["images_per_second"] > 0

    # Two steps towards 95% faithfulness (the code path; it is not reached).
    (faithful,) = [r for r in records if r["figure"] == "time_to_faithfulness"]
    curve = faithful["curve"]
    assert faithful["steps_trained"] == 2 and [p["step"] for p in curve] == [1, 2] and faithful["every"] == 1
    assert 0 < curve[0]["seconds"] < curve[1]["seconds"] and all(0 <= p["faithfulness"] <= 1 for p in curve)
    assert faithful["best"] == max(curve, key=lambda p: p["faithfulness"]) and faithful["val_scenes"] == 16
    assert faithful["settings"]["batch_size"] == 16 and faithful["settings"]["num_train"] == 64
    assert faithful["settings"]["jit_compile"] == "off" and faithful["settings"]["model"]["model_dim"] == 16
    assert faithful["evaluation_seconds"] > 0 and faithful["first_step_seconds"] <= curve[0]["seconds"]

    training_records = [r for r in records if r["figure"] == "training"]
    assert [(r["model"], r["batch_size"]) for r in training_records] == [("minicap", 8), ("stock", 8)]
    for record in training_records:
        assert record["steps"] == 1 and record["jit_compile"] is False  # --jit off
        expected_loop = "device-resident state" if backend == "jax" else "train_on_batch"
        assert record["step_loop"] == expected_loop
        assert record["images_per_second"] == pytest.approx(record["batch_size"] / record["seconds_per_step"])
        assert record["mfu"] == pytest.approx(
            record["training_flops_per_image"] * record["images_per_second"] / 1e12)
        assert record["minicap_over_stock"] > 0
    assert training_records[0]["parameters"] == training_records[1]["parameters"] < 100_000  # the small model
    decoding = [r for r in records if r["figure"] == "decoding"]
    assert [(r["method"], r["cached"], r["beam_width"]) for r in decoding] == [
        ("greedy", True, 1), ("greedy", False, 1), ("beam", True, 5)]
    assert all(r["batch_size"] == 4 and r["max_length"] == 20 and r["captions_per_second"] > 0 for r in decoding)
    assert decoding[0]["cached_over_naive"] == pytest.approx(decoding[1]["seconds"] / decoding[0]["seconds"])
    if report["device"]["kind"] == "cpu":
        assert [(s["figure"], s["config"]) for s in report["skipped"]] == [("feature_cache", "photos"),
                                                                           ("training", "vit-b32")]


@pytest.mark.single_backend  # the report's logic; other backends' steps: the subprocess test
def test_feature_cache_bench_times_both_inputs_and_extrapolates_per_epoch_and_run():
    # Without XLA: compiling two ViT-B/32 models for a CPU costs a third of this test, and the figures' logic is
    # the same (bench_training_step times the XLA setting of each backend).
    record = bench_train.bench_feature_cache(profile("photos"), batch_size=2, steps=1, image_steps=1,
                                             repeats=1, jit="off")
    assert record["seconds_per_step_repeats"] == {"cached": [record["seconds_per_step_cached"]],
                                                  "images": [record["seconds_per_step_images"]]}
    photos = profile("photos")
    sizes = (record["image_size"], record["num_patches"], record["feature_dim"], record["batch_size"])
    assert sizes == (224, 49, 768, 2)
    assert (record["model_dim"], record["num_heads"], record["decoder_layers"], record["epochs"]) == (
        photos.model.model_dim, photos.model.num_heads, photos.model.decoder_layers, photos.epochs)
    assert record["backbone_weights"] is None and record["epoch_steps"] == 6000 * 5 // 2
    assert record["jit_compile"] is False
    assert record["images_over_cached"] == pytest.approx(
        record["seconds_per_step_images"] / record["seconds_per_step_cached"])
    assert record["epoch_seconds_images"] == pytest.approx(15000 * record["seconds_per_step_images"])
    # ViT-B/32 at 224 px: the 4.4 "GFLOPs" usually quoted are multiply-adds, 8.8e9 FLOPs as counted here (the 49
    # patches and the class token).
    assert record["backbone_flops_per_image"] == flops.encoder_flops(model_config(photos, 3000, 0))
    assert 8.7e9 < record["backbone_flops_per_image"] < 8.9e9
    decoder = record["decoder_training_flops_per_image"]
    assert decoder == 3 * flops.decoder_flops(model_config(photos, 3000, 0))
    assert record["flops_images_over_cached"] == pytest.approx((record["backbone_flops_per_image"] + decoder) / decoder)
    assert record["run_seconds_cached"] == pytest.approx(
        record["feature_seconds"] + record["epochs"] * record["epoch_seconds_cached"])
    assert record["feature_seconds"] == pytest.approx(6000 * record["feature_seconds_per_image"])
    report = {"backend": record["backend"], "device": {"name": record["device"], "kind": record["device_kind"]},
              "dtype_policy": "float32", "peak_flops": 1e12, "peak_source": "given", "load_average": None,
              "records": [record], "skipped": []}
    table = bench_report.format_table(report)
    assert "Feature cache: photos profile, vit-b32 frozen (random weights) at 224 px = 49 patches x 768" in table
    assert f"ratio {record['images_over_cached']:.1f}x" in table


def test_a_backend_that_is_not_installed_is_named():
    # (Another backend's training step in a subprocess: test_bench_command_writes_the_json.)
    with pytest.raises(ValueError, match="backend 'theano' is not installed here"):
        bench_train.in_subprocess("theano", "training_step", {}, log=lambda _: None)


def test_faithfulness_curve_evaluates_every_n_steps_and_stops_at_the_target_or_a_budget():
    def steps_until_stop(rates, **options):
        scenes = make_shapes(2, split="val", image_size=32, max_objects=1)
        settings = dict(every=2, target=0.9, started=time.perf_counter(), total_steps=9, log=lambda _: None)
        curve = bench_faithfulness.FaithfulnessCurve(scenes, None, **{**settings, **options})
        rates = list(rates)

        def evaluate():  # a planted curve instead of captions
            curve.points.append({"step": curve.steps, "seconds": curve.training_seconds(),
                                 "faithfulness": rates.pop(0)})
            return curve.points[-1]["faithfulness"]

        curve.evaluate = evaluate
        with pytest.raises(bench_faithfulness._Stop):
            for batch in range(100):
                curve.on_train_batch_end(batch)
        return [point["step"] for point in curve.points]

    assert steps_until_stop([0.2, 0.95, 0.99]) == [2, 4]  # every 2 steps, until 0.9 is reached
    assert steps_until_stop([0.2, 0.3, 0.4, 0.5, 0.6]) == [2, 4, 6, 8, 9]  # and after the last step
    assert steps_until_stop([0.2, 0.3], max_steps=3) == [2, 3]
    assert steps_until_stop([0.2], max_seconds=0.0) == [1]  # the budget is spent: evaluate and stop
    assert steps_until_stop([0.95, 0.2, 0.3, 0.4, 0.5], stop_at_target=False) == [2, 4, 6, 8, 9]


def test_first_and_best_points_of_a_curve():
    points = [{"step": s, "faithfulness": f} for s, f in ((250, 0.5), (500, 0.96), (750, 0.99), (1000, 0.97))]
    assert bench_faithfulness.first_and_best(points, 0.95) == (points[1], points[2])
    assert bench_faithfulness.first_and_best(points, 0.995) == (None, points[2])
    assert bench_faithfulness.first_and_best([], 0.95) == (None, None)


def test_jit_auto_is_xla_on_tensorflow_and_jax_and_eager_on_torch():
    expected = {"tensorflow": True, "jax": True, "torch": False}[keras.backend.backend()]
    assert training.resolve_jit_compile("auto") is expected
    model = training.compile_model(CaptionModel(_tiny()))
    assert model.jit_compile is expected
    model.head.supports_jit = False  # a layer XLA cannot compile keeps "auto" eager
    assert training.resolve_jit_compile("auto", model) is False
    assert training.resolve_jit_compile("on") is True and training.resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match="jit_compile must be 'auto', 'on', 'off', True or False, got 'yes'"):
        training.resolve_jit_compile("yes")


def test_run_rejects_bad_bench_settings():
    with pytest.raises(ValueError, match="faithfulness_every must be a positive integer, got 0"):
        bench.run(quick=True, faithfulness_every=0)
    with pytest.raises(ValueError, match="faithfulness_budget must be a positive number of seconds, got -1"):
        bench.run(quick=True, faithfulness_budget=-1)
    with pytest.raises(ValueError, match=r"backends must name some of \[.jax., .tensorflow., .torch.\], got \[.theano"):
        bench.run(quick=True, backends=["theano"])
    with pytest.raises(ValueError, match="unknown setting 'model_width'"):
        bench.run(quick=True, overrides={"model_width": 3})


def test_bench_command_rejects_bad_batch_sizes(capsys):
    assert bench.main(["--quick", "--batch-sizes", "8,x"]) == 2
    assert "batch sizes must be positive integers separated by commas, got '8,x'" in capsys.readouterr().err
