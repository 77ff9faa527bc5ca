import json
import math

import keras
import numpy as np
import pytest

from minicap.checkpoint import write_json_atomic
from minicap.training import MaskedAccuracy, MaskedSparseCrossEntropy, TransformerSchedule, make_optimizer


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_masked_loss_known_value_ignores_padding():
    # Two positions are real (targets 1 and 2), one is padding (0) with absurd logits.
    logits = np.array([[[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0], [100.0, -100.0, 0.0]]], "float32")
    targets = np.array([[1, 2, 0]])
    # p(1) at position 0 = 3 / 5; p(2) at position 1 = 1 / 3.
    expected = -(math.log(3 / 5) + math.log(1 / 3)) / 2
    assert numpy(MaskedSparseCrossEntropy()(targets, logits)) == pytest.approx(expected, rel=1e-6)


def test_all_padding_batch_gives_a_finite_zero_loss():
    logits = np.random.rand(2, 4, 7).astype("float32")
    loss = numpy(MaskedSparseCrossEntropy()(np.zeros((2, 4), "int32"), logits))
    assert np.isfinite(loss) and loss == 0.0


def test_label_smoothing_known_value():
    logits = np.array([[[0.0, 0.0, 0.0, 0.0]]], "float32")  # uniform over 4 words
    # With uniform predictions every word has log-probability -log 4, so smoothing changes nothing.
    loss = numpy(MaskedSparseCrossEntropy(label_smoothing=0.1)(np.array([[1]]), logits))
    assert loss == pytest.approx(math.log(4.0), rel=1e-6)
    logits = np.array([[[2.0, 0.0]]], "float32")
    log_p = logits[0, 0] - np.log(np.exp(logits[0, 0]).sum())
    expected = -(0.8 * log_p[0] + 0.2 * log_p.mean())
    # Target 0 with pad_id -1, so that 0 counts as a word: 0.8 on it, 0.2 spread over both words.
    loss = numpy(MaskedSparseCrossEntropy(pad_id=-1, label_smoothing=0.2)(np.array([[0]]), logits))
    assert loss == pytest.approx(expected, rel=1e-6)


def test_loss_is_finite_under_float16_logits():
    logits = (np.random.rand(2, 3, 50) * 60000).astype("float16")
    assert np.isfinite(numpy(MaskedSparseCrossEntropy()(np.array([[1, 2, 0], [3, 0, 0]]), logits)))


def test_bad_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        MaskedSparseCrossEntropy(label_smoothing=1.0)


def test_masked_accuracy_accumulates_over_batches():
    metric = MaskedAccuracy()
    logits = np.eye(4, dtype="float32")[None, [1, 2, 3]]  # predicts 1, 2, 3
    metric.update_state(np.array([[1, 0, 3]]), logits)  # 2 real tokens, both right
    metric.update_state(np.array([[2, 2, 0]]), logits)  # 2 real tokens, one right
    assert numpy(metric.result()) == pytest.approx(3 / 4)


def test_schedule_known_values():
    schedule = TransformerSchedule(model_dim=512, warmup_steps=4000)
    # Step s (1-based) gets 512^-0.5 * min(s^-0.5, s * 4000^-1.5).
    for step in (1, 100, 3999, 4000, 10000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert float(numpy(schedule(step - 1))) == pytest.approx(expected, rel=1e-5)
    rates = [float(numpy(schedule(s))) for s in range(0, 8000, 500)]
    peak = int(np.argmax(rates))
    assert rates[:peak] == sorted(rates[:peak]) and rates[peak:] == sorted(rates[peak:], reverse=True)


def test_schedule_serialises():
    schedule = TransformerSchedule(256, 100, 2.0)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert clone.get_config() == schedule.get_config()


def test_optimizer_has_the_papers_betas():
    optimizer = make_optimizer(128, 10)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.98, 1e-9)


def test_weight_decay_makes_adamw_and_is_checked():
    plain = make_optimizer(64, 10)  # on PyTorch, Keras' own subclass of Adam
    assert isinstance(plain, keras.optimizers.Adam) and not isinstance(plain, keras.optimizers.AdamW)
    optimizer = make_optimizer(64, 10, weight_decay=0.1)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        make_optimizer(64, 10, weight_decay=-0.1)


def test_weight_decay_shrinks_weight_matrices_only():
    from minicap.model import CaptionConfig, CaptionModel
    from minicap.training import compile_model

    model = CaptionModel(CaptionConfig(vocab_size=12, max_length=6, image_size=16, patch_size=8, model_dim=16,
                                       num_heads=2, encoder_layers=1, decoder_layers=1, mlp_dim=32))
    compile_model(model, warmup_steps=10, weight_decay=0.5)
    for variable in model.trainable_variables:  # non-zero everywhere, so any decay shows
        variable.assign(keras.ops.ones(variable.shape))
    before = {v.path: numpy(v) for v in model.trainable_variables}
    rate = float(numpy(model.optimizer.learning_rate))
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    model.optimizer.apply_gradients(zip(zeros, model.trainable_variables))  # Adam's own step is 0 here
    for variable in model.trainable_variables:
        factor = numpy(variable) / before[variable.path]
        decayed = variable.name == "kernel"
        np.testing.assert_allclose(factor, 1 - rate * 0.5 if decayed else 1.0, rtol=1e-5, err_msg=variable.path)


def test_loss_round_trips_through_config():
    loss = MaskedSparseCrossEntropy(pad_id=3, label_smoothing=0.1)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (clone.pad_id, clone.label_smoothing) == (3, 0.1)


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left behind
