"""A shared check for minicap layers: config round trip, symbolic call, and `.keras` save/load.

Every layer test calls `check_layer` so that each layer is held to the same contract
(serializable, rebuildable from its config, identical outputs after a save and a load).
"""
import numpy as np
import keras


def check_layer(layer, inputs, tmp_path, call_kwargs=None, atol=1e-6):
    """Run the common contract checks on ``layer`` called as ``layer(*inputs, **call_kwargs)``.

    Returns the eager output (as numpy) for further, layer-specific assertions.
    """
    call_kwargs = call_kwargs or {}
    inputs = [np.asarray(x) for x in inputs]
    expected = keras.ops.convert_to_numpy(layer(*inputs, **call_kwargs))

    # get_config / from_config gives an equal config and, with the same weights, equal outputs.
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(*inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(*inputs, **call_kwargs)), expected, atol=atol)

    # The layer inside a functional model survives model.save / load_model(safe_mode=True).
    symbolic = [keras.Input(shape=x.shape[1:], dtype=str(x.dtype)) for x in inputs]
    model = keras.Model(symbolic, layer(*symbolic, **call_kwargs))
    path = tmp_path / f"{layer.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)), expected, atol=atol)
    return expected
