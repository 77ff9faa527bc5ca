"""``minicap.train.train`` and ``minicap train``: results, refusals, determinism, resuming, and each training
setting's effect."""
import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from minicap.config import profile, PROFILES, TrainConfig
from minicap.data.datasets import load_split
from minicap.model import CaptionModel
from minicap.train import feature_cache_dir, load_run, make_batches, run_config, train, train_or_load
from tests.support import TINY_RUN

def tiny(**overrides):
    return profile("quick", **{**TINY_RUN, **overrides})


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises after ``steps`` training steps, as a crash or a disconnect would stop a run."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            raise Crash(f"crashed after {self.steps} steps")


def test_train_saves_a_loadable_model_and_its_history(tmp_path, capsys):
    result = train(tiny(), tmp_path / "run", verbose=2)
    # verbose=2: one line per epoch of the whole run, numbered in it, with its training and validation values.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    for line, entry in zip(lines, json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]):
        assert f" loss={entry['loss']:.3f}" in line and f"val_loss={entry['val_loss']:.3f}" in line
        assert f"val_accuracy={entry['val_accuracy']:.3f}" in line
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["config.json", "history.json", "model.keras", "tokenizer.json", "train_config.json"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    steps_per_epoch = 48 * 4 // 16  # every reference caption once per epoch
    assert history["step"] == list(range(1, 2 * steps_per_epoch + 1))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and "val_loss" in history["epochs"][0]
    model, tokenizer = load_run(tmp_path / "run")
    images = np.random.rand(2, 32, 32, 3).astype("float32")
    tokens = tokenizer.encode(["a red circle", "a blue square"], 10)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model((images, tokens))),
                               keras.ops.convert_to_numpy(result.model((images, tokens))), atol=1e-6)


def test_a_finished_run_is_never_overwritten_without_asking(tmp_path):
    train(tiny(epochs=1), tmp_path / "run", verbose=0)
    before = (tmp_path / "run" / "model.keras").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a trained model.*overwrite"):
        train(tiny(epochs=1), tmp_path / "run", verbose=0)
    assert (tmp_path / "run" / "model.keras").read_bytes() == before
    train(tiny(epochs=1, seed=1), tmp_path / "run", overwrite=True, verbose=0)
    assert (tmp_path / "run" / "model.keras").read_bytes() != before


def test_same_seed_same_loss_curve(tmp_path):
    first = train(tiny(epochs=1), tmp_path / "a", verbose=0).history["loss"]
    second = train(tiny(epochs=1), tmp_path / "b", verbose=0).history["loss"]
    other = train(tiny(epochs=1, seed=5), tmp_path / "c", verbose=0).history["loss"]
    np.testing.assert_allclose(first, second, rtol=1e-5)
    assert not np.allclose(first, other, rtol=1e-3)


def test_weight_decay_trains_with_adamw(tmp_path):
    plain = train(tiny(epochs=1), tmp_path / "plain", verbose=0)
    decayed = train(tiny(epochs=1, weight_decay=0.5), tmp_path / "decayed", verbose=0)
    assert isinstance(decayed.model.optimizer, keras.optimizers.AdamW)
    assert not isinstance(plain.model.optimizer, keras.optimizers.AdamW)
    assert decayed.history["loss"][0] == pytest.approx(plain.history["loss"][0], rel=1e-6)  # same start
    assert not np.allclose(decayed.history["loss"], plain.history["loss"], rtol=1e-4)  # then the decay shows


# ----------------------------------------------------------------------------------------------------------
# Each training setting has its effect: one run with every one of them away from its default, then a test each

SETTINGS = dict(lr_scale=0.5, label_smoothing=0.2, min_word_count=30, word_dropout=0.5)


@pytest.fixture(scope="module")
def with_settings(tmp_path_factory):
    """A finished run of ``tiny(epochs=1, **SETTINGS)``: its TrainResult."""
    return train(tiny(epochs=1, **SETTINGS), tmp_path_factory.mktemp("settings") / "run", verbose=0)


def test_lr_scale_multiplies_the_learning_rate_of_every_step(with_settings):
    history = json.loads((with_settings.run_dir / "history.json").read_text())
    # After step s the optimizer holds the rate of step s + 1: scale · d^-0.5 · min(n^-0.5, n · warmup^-1.5) with
    # n = s + 1 (Vaswani et al. 2017, eq. 3), for d = 16 and a warm-up of 5 steps.
    expected = [0.5 * 16**-0.5 * min((s + 1) ** -0.5, (s + 1) * 5**-1.5) for s in history["step"]]
    assert len(expected) == 12
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)


def _clean_batches(result, split):
    """The run's ``split`` as batches in file order, every word as the captions have it (no word dropout)."""
    from minicap.data.pipeline import CaptionBatches

    config = result.config
    data = load_split(config, split)
    return CaptionBatches(data.images, data.captions, result.tokenizer, config.model.max_length, config.batch_size,
                          shuffle=False)


def test_label_smoothing_is_the_loss_the_run_trains_on(with_settings):
    (images, inputs), targets = _clean_batches(with_settings, "val")[0]
    model = with_settings.model
    logits = keras.ops.convert_to_numpy(model((images, inputs), training=False)).astype("float64")  # (B, T, V)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    # 1 - ε on the true word, ε spread over the vocabulary; averaged over the real (non-padding) words.
    true = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    smoothed = -(0.8 * true + 0.2 * log_probs.mean(-1))
    real = targets != with_settings.tokenizer.pad_id
    reported = model.evaluate((images, inputs), targets, batch_size=len(targets), verbose=0, return_dict=True)
    assert reported["loss"] == pytest.approx(smoothed[real].mean(), rel=1e-5)
    assert not reported["loss"] == pytest.approx(-true[real].mean(), rel=1e-2)  # which is not the plain one


def test_min_word_count_leaves_rarer_words_out_of_the_saved_vocabulary(with_settings):
    from minicap.text import Tokenizer

    captions = [c for refs in load_split(with_settings.config, "train").captions for c in refs]
    counts = collections.Counter(word for caption in captions for word in caption.split())
    assert min(counts.values()) < 30 <= max(counts.values())  # some words are rarer than that, some not
    vocabulary = Tokenizer.load(with_settings.run_dir / "tokenizer.json").vocabulary
    assert vocabulary[:4] == ["[PAD]", "[START]", "[END]", "[UNK]"]
    assert sorted(vocabulary[4:]) == sorted(word for word, count in counts.items() if count >= 30)


def test_word_dropout_leaves_the_validation_batches_whole(with_settings):
    # The validation loss the run recorded is the trained model's loss on the validation captions as they are: had
    # words of their inputs been dropped (half of them, here), it would be another.
    batches = _clean_batches(with_settings, "val")
    recorded = with_settings.history["epochs"][-1]["val_loss"]
    assert with_settings.model.evaluate(batches, verbose=0, return_dict=True)["loss"] == pytest.approx(recorded,
                                                                                                         rel=1e-5)
    # The training batches did lose words: [UNK] in inputs where the caption had a known word.
    (_, inputs), targets = make_batches(with_settings.config, with_settings.model,
                                                load_split(with_settings.config, "train"),
                                                with_settings.tokenizer, training=True)[0]
    unk = with_settings.tokenizer.unk_id
    assert ((inputs[:, 1:] == unk) & (targets[:, :-1] != unk)).any()


def test_backbones_with_other_weights_never_share_cached_features(tmp_path):
    # The photos profile's frozen backbone, twice in one data directory with different pretrained weights (as a
    # reader who changes backbone_weights would run it): each run's batches carry its own backbone's features.
    import types

    from minicap.data.features import list_feature_caches
    from minicap.vit import PretrainedViT
    from minicap.text import Tokenizer
    from tests.support.photo_stand_ins import write_caption_folder, write_vit_weights

    config = profile("photos", dataset=str(write_caption_folder(tmp_path / "photos", count=3)),
                             data_dir=str(tmp_path / "data"), image_size=32)
    split = load_split(config, "train")
    tokenizer = Tokenizer.fit([c for refs in split.captions for c in refs])
    images = split.load_images(32).astype("float32") / 255.0
    features = []
    for seed in (1, 2):
        # A small ViT stands in for ViT-B/32 (the same code path, 2 x 2 patches of 16).
        sizes = dict(patch_size=16, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
        backbone = PretrainedViT(32, variant=None, **sizes)
        write_vit_weights(tmp_path / f"weights-{seed}.npz", **sizes, grid=2, scale=0.5, seed=seed)
        backbone.load_weights_from(str(tmp_path / f"weights-{seed}.npz"))
        model = types.SimpleNamespace(config=config.model, encoder=backbone)  # what the feature pass reads
        batches = make_batches(config, model, split, tokenizer, training=False, progress=False)
        features.append(np.asarray(batches.features, "float32"))
        own = keras.ops.convert_to_numpy(backbone(images))  # (images, 4, 16)
        np.testing.assert_allclose(features[-1], own, rtol=2**-10, atol=2**-10)  # float16 in the cache
    assert np.abs(features[0] - features[1]).max() > 0.1
    assert len(list_feature_caches(feature_cache_dir(config))) == 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The history of a run of ``tiny(dropout=0.0)`` that nothing interrupted (one for both crash steps)."""
    return train(tiny(dropout=0.0), tmp_path_factory.mktemp("whole") / "run", verbose=0).history


@pytest.mark.parametrize("crash_step", [3, 12])  # mid-epoch (between checkpoints), and at an epoch's end
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, crash_step, uninterrupted):
    # Without dropout, a resumed run is the uninterrupted run exactly: same weights, optimizer state
    # and batch order. (With dropout, the masks drawn after a resume differ.)
    config = tiny(dropout=0.0)
    with pytest.raises(Crash):
        train(config, tmp_path / "cut", verbose=0, callbacks=[CrashAt(crash_step)])
    assert not (tmp_path / "cut" / "model.keras").exists()
    resumed = train(config, tmp_path / "cut", verbose=0)
    assert resumed.resumed_from_step == crash_step - crash_step % 2  # the last checkpoint
    assert resumed.history["step"] == uninterrupted["step"]  # every step once
    last_epoch = slice(12, 24)  # the per-step losses are running means over the epoch
    np.testing.assert_allclose(resumed.history["loss"][last_epoch], uninterrupted["loss"][last_epoch], rtol=1e-5)
    assert resumed.history["epochs"][-1]["val_loss"] == pytest.approx(uninterrupted["epochs"][-1]["val_loss"], rel=1e-5)


def test_run_eagerly_compiles_no_step_and_trains_as_the_graph_does(tmp_path):
    eager = train(tiny(epochs=1, run_eagerly=True), tmp_path / "eager", verbose=0)
    graph = train(tiny(epochs=1, run_eagerly=False, jit_compile="off"), tmp_path / "graph", verbose=0)
    assert eager.model.run_eagerly and not graph.model.run_eagerly and not eager.model.jit_compile
    np.testing.assert_allclose(eager.history["loss"], graph.history["loss"], rtol=1e-4)
    with pytest.raises(ValueError, match="run_eagerly must be true or false, got 'yes'"):
        tiny(run_eagerly="yes")


def test_an_interrupted_run_saved_before_a_setting_existed_resumes(tmp_path):
    with pytest.raises(Crash):
        train(tiny(), tmp_path / "run", verbose=0, callbacks=[CrashAt(3)])
    saved = tmp_path / "run" / "train_config.json"
    older = json.loads(saved.read_text())
    del older["word_dropout"], older["data_hashes"]  # as a run of an older minicap wrote it (defaults now)
    saved.write_text(json.dumps(older))
    with pytest.raises(ValueError, match="different settings \\(word_dropout\\)"):
        train(tiny(word_dropout=0.1), tmp_path / "run", verbose=0)
    assert train(tiny(), tmp_path / "run", verbose=0).resumed_from_step == 2


def test_resuming_with_other_settings_is_refused(tmp_path):
    with pytest.raises(Crash):
        train(tiny(), tmp_path / "run", verbose=0, callbacks=[CrashAt(3)])
    with pytest.raises(ValueError, match="different settings \\(model.model_dim\\)"):
        train(tiny(model_dim=32), tmp_path / "run", verbose=0)


def test_the_photos_profile_is_the_articles_model():
    config = profile("photos")
    model = config.model
    assert (model.backbone, model.image_size, model.model_dim, model.num_heads) == ("vit-b32", 224, 256, 4)
    assert model.backbone_weights == "imagenet21k+imagenet2012" and model.freeze_backbone
    assert config.dataset == "flickr8k" and config.uses_feature_cache
    assert (model.num_patches, model.feature_dim) == (49, 768)


# `minicap train` with one more Keras callback, which SIGKILLs its own process once the optimizer has taken
# step {step}: the kill lands on a chosen step, and nothing (not even Python's exit handlers) runs after it.
KILLED_AT_STEP = """
import os, signal, sys
import keras
import minicap.train
from minicap import cli

class KillAtStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

train = minicap.train.train
minicap.train.train = lambda *args, **kwargs: train(*args, callbacks=[KillAtStep()], **kwargs)
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli_train(run_dir, *extra, kill_at_step=None):
    settings = [f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY_RUN.items()]
    program = ["-m", "minicap.cli"] if kill_at_step is None else ["-c", KILLED_AT_STEP.format(step=kill_at_step)]
    command = [sys.executable, *program, "train", "-o", str(run_dir), *settings, "--set=epochs=3", *extra]
    # Unbuffered, so that what a killed process printed is not lost with it.
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
@pytest.mark.single_backend  # a subprocess killed and resumed; resume on each backend: the in-process tests above
def test_minicap_train_killed_with_sigkill_resumes_and_finishes(tmp_path):
    # 12 steps per epoch, 3 epochs, a checkpoint every 2 steps. Killed at step 7 (the last checkpoint is
    # step 6, in epoch 1), then, resumed, at step 17 (checkpoint 16, in epoch 2); then left to finish.
    run_dir = tmp_path / "run"
    for kill_at_step, resumed_from in ((7, None), (17, 6)):
        killed = _cli_train(run_dir, kill_at_step=kill_at_step)
        assert killed.returncode == -signal.SIGKILL, killed.stdout
        if resumed_from is None:
            assert "resuming" not in killed.stdout
        else:
            assert f"resuming {run_dir} from step 6 (epoch 1, batch 6)" in killed.stdout
        assert json.loads((run_dir / "checkpoints" / "state.json").read_text())["step"] == kill_at_step - 1
        assert not (run_dir / "model.keras").exists()
    finished = _cli_train(run_dir)
    assert finished.returncode == 0, finished.stdout
    assert f"resuming {run_dir} from step 16 (epoch 2, batch 4)" in finished.stdout
    assert "trained model saved" in finished.stdout
    history = json.loads((run_dir / "history.json").read_text())
    assert history["step"] == list(range(1, 3 * 12 + 1))  # every step exactly once, despite two kills

    # Without dropout, training is deterministic on a CPU: the killed and resumed run ends with the
    # uninterrupted run's model, so the resumes restored weights, optimizer state and batch order.
    whole = train(tiny(epochs=3), tmp_path / "whole", verbose=0)
    assert whole.model.config.dropout == 0.0
    assert json.loads((run_dir / "train_config.json").read_text()) == json.loads(
        (tmp_path / "whole" / "train_config.json").read_text())
    resumed, _ = load_run(run_dir)
    assert len(resumed.weights) == len(whole.model.weights)
    for weight, expected in zip(resumed.weights, whole.model.weights):  # in the same order (not the same names)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(expected),
                                   rtol=1e-5, atol=1e-6, err_msg=weight.path)
    # The per-step losses are running means over an epoch, which a resume restarts: those saved before the
    # first kill and those of the last epoch equal the uninterrupted run's; every epoch's val_loss does.
    expected = whole.history
    np.testing.assert_allclose(history["loss"][:6], expected["loss"][:6], rtol=1e-5)
    np.testing.assert_allclose(history["loss"][24:], expected["loss"][24:], rtol=1e-5)
    np.testing.assert_allclose([e["val_loss"] for e in history["epochs"]],
                               [e["val_loss"] for e in expected["epochs"]], rtol=1e-5)
    # And the trained model is never overwritten without --overwrite.
    refused = _cli_train(run_dir)
    assert refused.returncode == 2 and "--overwrite" in refused.stdout


def test_train_or_load_returns_the_runs_own_settings_and_refuses_another_profile(tmp_path):
    trained = train(tiny(epochs=1), tmp_path / "run", verbose=0)
    assert trained.config.profile == "quick"
    loaded = train_or_load(tiny(epochs=1), tmp_path / "run")
    assert loaded.config == trained.config and loaded.config.model.image_size == TINY_RUN["image_size"]
    assert run_config(tmp_path / "run") == trained.config
    with pytest.raises(ValueError, match="holds a run of the 'quick' profile, not of 'photos'"):
        train_or_load("photos", tmp_path / "run")


def test_a_finished_run_is_loaded_never_retrained_unless_asked_and_other_settings_are_named(tmp_path):
    # What chapters 5 and 6 and the photos notebook do when they find a run (on Colab, on Google Drive).
    trained = train(tiny(epochs=1), tmp_path / "run", verbose=0)
    model_file = tmp_path / "run" / "model.keras"
    written = model_file.stat().st_mtime_ns
    assert not trained.loaded and trained.training_seconds > 0
    # Where the data lives is not what the run computes: another data or extraction folder loads it.
    loaded = train_or_load(tiny(epochs=1, data_dir=str(tmp_path / "elsewhere"), extract_dir="/other"),
                           tmp_path / "run", verbose=0)
    assert loaded.loaded and loaded.history == trained.history and loaded.config == trained.config
    assert model_file.stat().st_mtime_ns == written  # nothing trained, nothing written
    with pytest.raises(ValueError, match=r"finished run of other settings \(epochs, model.model_dim\); the run has "
                                         r"epochs=1, model.model_dim=16, these settings epochs=2, "
                                         r"model.model_dim=32: .*RETRAIN"):
        train_or_load(tiny(epochs=2, model_dim=32), tmp_path / "run")
    assert model_file.stat().st_mtime_ns == written
    retrained = train_or_load(tiny(epochs=2), tmp_path / "run", retrain=True, verbose=0)
    assert not retrained.loaded and retrained.history["epochs"][-1]["epoch"] == 2
    assert run_config(tmp_path / "run").epochs == 2


def test_train_or_load_resumes_an_interrupted_run(tmp_path):
    with pytest.raises(Crash):
        train(tiny(), tmp_path / "run", verbose=0, callbacks=[CrashAt(3)])
    resumed = train_or_load(tiny(), tmp_path / "run", verbose=0)
    assert not resumed.loaded and resumed.resumed_from_step == 2  # the checkpoint of step 2
    assert resumed.history["step"] == list(range(1, resumed.history["step"][-1] + 1))


def test_train_fits_shuffled_batches_with_word_dropout_and_validates_on_whole_ones(tmp_path, monkeypatch):
    # What `train` feeds `fit`, batch by batch, seen from the data set's side: the training batches change order
    # from one epoch to the next and lose words to [UNK] at the rate asked for; the validation batches do neither.
    import minicap.train
    from minicap.data.pipeline import CaptionBatches

    served = collections.defaultdict(list)  # data set -> [(epoch, index, input tokens)]

    class Recorded(CaptionBatches):
        def __getitem__(self, index):
            batch = super().__getitem__(index)
            served[id(self)].append((self.epoch, index, np.asarray(batch[0][1]), np.asarray(batch[1])))
            return batch

    monkeypatch.setattr(minicap.train, "CaptionBatches", Recorded)
    result = train(tiny(word_dropout=0.5, epochs=2), tmp_path / "run", verbose=0)
    unk = result.tokenizer.unk_id
    training, validation = sorted(served.values(), key=len, reverse=True)[:2]  # 6 training batches an epoch, 1
    words = lambda inputs, targets: (targets[:, :-1] > 3) & (inputs[:, 1:] != result.tokenizer.pad_id)  # noqa: E731
    dropped = [((i[:, 1:] == unk) & words(i, t)).sum() / words(i, t).sum() for _, _, i, t in training]
    assert 0.35 < np.mean(dropped) < 0.65  # about half of the words, as asked
    assert all((i[:, 1:][words(i, t)] != unk).all() for _, _, i, t in validation)  # whole
    first = {index: targets for epoch, index, _, targets in training if epoch == 0}
    second = {index: targets for epoch, index, _, targets in training if epoch == 1}
    assert first.keys() == second.keys() and len(first) == 12  # 48 scenes, 4 captions each, batches of 16
    assert any(not np.array_equal(first[i], second[i]) for i in first)  # the second epoch, in another order


def test_a_resumed_fine_tuning_run_keeps_the_backbone_it_trained(tmp_path, monkeypatch):
    # freeze_backbone=False: the pretrained ViT trains, so a checkpoint must hold it; a resumed run must continue
    # from its trained weights, not from the pretrained file. (A ViT of the official architecture, small, stands in
    # for ViT-B/32 under its name.)
    from minicap.config import VIT_VARIANTS
    from tests.support.photo_stand_ins import write_caption_folder, write_vit_weights

    small = dict(patch_size=8, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
    monkeypatch.setitem(VIT_VARIANTS, "vit-b32", small)
    write_vit_weights(tmp_path / "vit.npz", grid=4, scale=0.3, **small)
    folder = write_caption_folder(tmp_path / "photos", count=10)
    settings = dict(dataset=str(folder), image_size=32, backbone_weights=str(tmp_path / "vit.npz"), freeze_backbone=False,
                    epochs=2, batch_size=8, checkpoint_every=2, dropout=0.0, mixed_precision=False, min_word_count=1,
                    max_length=12, model_dim=16, num_heads=2, decoder_layers=1, mlp_dim=32, warmup_steps=5,
                    run_eagerly=TINY_RUN["run_eagerly"], data_dir=str(tmp_path / "data"))
    config = profile("photos", **settings)
    whole = train(config, tmp_path / "whole", verbose=0)
    with pytest.raises(Crash):
        train(config, tmp_path / "run", verbose=0, callbacks=[CrashAt(5)])
    resumed = train(config, tmp_path / "run", verbose=0)
    assert resumed.resumed_from_step == 4
    trained, pretrained = whole.model.encoder.get_weights(), CaptionModel(resumed.model.config).encoder.get_weights()
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(trained, pretrained))  # the backbone did train
    for ours, expected in zip(resumed.model.encoder.get_weights(), trained):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_a_run_directory_written_before_the_settings_moved_still_loads(tmp_path):
    # A finished run of an earlier minicap: its train_config.json has no extract_dir yet, and its scratch model's
    # backbone_weights were written as None (today a scratch encoder ignores the field). It loads, trains nothing.
    trained = train(tiny(epochs=1), tmp_path / "run", verbose=0)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    del saved["extract_dir"]
    saved["model"]["backbone_weights"] = None
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(saved))
    loaded = train_or_load(tiny(epochs=1), tmp_path / "run", verbose=0)
    assert loaded.loaded and loaded.config.extract_dir == "" and loaded.config.model.encoder_spec().weights is None
    assert loaded.model.config.encoder_spec() == trained.model.config.encoder_spec()
