"""``minicap.config``: one name per setting, profiles, and the round trip of the saved settings."""
import dataclasses
import json

import pytest

from minicap.config import PROFILES, CaptionConfig, TrainConfig, profile

# Independent of Keras's backend: runs once, on the default one.
pytestmark = pytest.mark.single_backend


def test_unknown_profile_and_setting():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profile("fast")
    with pytest.raises(ValueError, match="unknown setting 'model_width'; training settings: .*model settings: "):
        profile("quick", model_width=3)
    with pytest.raises(ValueError, match="unknown setting 'model.num_heads'"):
        profile("quick", **{"model.num_heads": 4})  # one name per setting: model_dim, not model.model_dim


def test_a_profile_holds_the_model_settings_once_and_overrides_reach_every_field():
    config = profile("quick", model_dim=32, num_heads=4, epochs=3, dataset="shapes")
    assert (config.model.model_dim, config.model.num_heads, config.epochs) == (32, 4, 3)
    assert config.model.vocab_size is None  # the tokenizer decides it
    assert PROFILES["quick"].model.model_dim != 32  # the profile itself is unchanged
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    model_names = {f.name for f in dataclasses.fields(CaptionConfig)}
    assert not train_names & model_names  # one source for each setting
    for name in model_names - {"vocab_size", "pad_id"}:  # every model field can be set by name
        value = getattr(config.model, name)
        assert getattr(profile("quick", **{name: value}).model, name) == value
    saved = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(saved) == config  # train_config.json round trip
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        profile("quick", epochs=0)
    with pytest.raises(ValueError, match="model_dim 30 is not divisible by num_heads 4"):
        profile("quick", model_dim=30, num_heads=4)


@pytest.mark.parametrize("cls, what", [(CaptionConfig, "CaptionConfig fields"), (TrainConfig, "training settings")])
def test_a_saved_config_with_an_unknown_name_is_refused_by_name(cls, what):
    values = (CaptionConfig(vocab_size=10) if cls is CaptionConfig else TrainConfig()).to_dict()
    assert cls.from_dict(values).to_dict() == values
    with pytest.raises(ValueError, match=rf"unknown {what} \['encoder_width'\]; known: "):
        cls.from_dict({**values, "encoder_width": 64})


def test_the_encoder_sizes_have_one_name_each():
    """``encoder_dim`` (None: the decoder's ``model_dim``) is the encoder's width; no second name reads it."""
    config = CaptionConfig(vocab_size=10, model_dim=32, num_heads=2, mlp_dim=64, encoder_dim=48, encoder_heads=3)
    assert config.feature_dim == 48
    assert not any(hasattr(config, name) for name in ("encoder_width", "encoder_num_heads", "encoder_mlp_width"))
    with pytest.raises(ValueError, match="encoder_dim 48 is not divisible by encoder_heads 5"):
        CaptionConfig(vocab_size=10, model_dim=32, num_heads=2, encoder_dim=48, encoder_heads=5)
    with pytest.raises(ValueError, match="encoder_dim 32 is not divisible by encoder_heads 3"):
        CaptionConfig(vocab_size=10, model_dim=32, num_heads=2, encoder_heads=3)  # None: model_dim


def test_every_profile_is_valid_and_named():
    for name in PROFILES:
        config = profile(name)
        assert config.profile == name and config.model.vocab_size is None
