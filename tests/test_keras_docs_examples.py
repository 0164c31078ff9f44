"""The Keras documentation's optimizer examples, translated to kopt and JAX.

Each test names the Keras page it follows. Keras's `model.fit` becomes an explicit
`jax.value_and_grad` + `opt.apply_gradients(zip(grads, variables))` loop; a `Dense(10)` layer
on 20 features is a (20, 10) kernel and a (10,) bias.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt

# A copy of ../shared/reference/legacy_weight_layout.json, so the test runs in any checkout.
LAYOUT_PATH = pathlib.Path(__file__).parent / "data" / "legacy_weight_layout.json"


def dense_variables(seed=0):
    """A Keras `Dense(10)` on 20 inputs: [kernel (20, 10), bias (10,)].

    Test data comes from numpy: every new eager jax op would cost a compile."""
    kernel = np.random.default_rng(seed).standard_normal((20, 10)).astype(np.float32) * 0.1
    return [kopt.Variable(kernel, name="kernel"), kopt.Variable(np.zeros((10,), np.float32), name="bias")]


def dense_mse(values, x, y):
    kernel, bias = values
    return jnp.mean(jnp.square(x @ kernel + bias[None, :] - y))


# --------------------------------------------------------------------------- RMSprop
# keras.io/api/optimizers: "opt = RMSprop(); m = Sequential([Dense(10)]); m.compile(opt,
# loss='mse'); data = np.arange(100).reshape(5, 20); labels = np.zeros(5); m.fit(data,
# labels); len(opt.get_weights())  # 3; opt.set_weights([np.array(10), np.ones([20, 10]),
# np.zeros([10])]); opt.iterations  # 10"


def _rmsprop_docs_fit():
    opt = kopt.optimizers.RMSprop()
    variables = dense_variables()
    data = np.arange(100, dtype=np.float32).reshape(5, 20)
    labels = np.zeros((5, 10), np.float32)
    _, grads = jax.value_and_grad(dense_mse)([v.value for v in variables], data, labels)
    opt.apply_gradients(zip(grads, variables))
    return opt, variables


def test_rmsprop_docs_get_weights_has_three_entries():
    opt, _ = _rmsprop_docs_fit()
    weights = opt.get_weights()
    assert len(weights) == 3
    assert [w.shape for w in weights] == [(), (20, 10), (10,)]
    assert np.issubdtype(weights[0].dtype, np.integer)
    assert int(weights[0]) == 1 == int(opt.iterations)


def test_rmsprop_docs_set_weights():
    opt, _ = _rmsprop_docs_fit()
    opt.set_weights([np.array(10), np.ones([20, 10]), np.zeros([10])])
    assert int(opt.iterations) == 10
    weights = opt.get_weights()
    assert int(weights[0]) == 10
    np.testing.assert_array_equal(weights[1], np.ones([20, 10]))
    np.testing.assert_array_equal(weights[2], np.zeros([10]))
    # The loaded state keeps the optimizer's dtypes.
    assert weights[1].dtype == np.float32 and weights[2].dtype == np.float32


# --------------------------------------------------------------------------- get()


def test_get_adam_string_gives_default_adam():
    opt = kopt.optimizers.get("adam")
    assert type(opt) is kopt.optimizers.Adam
    assert opt.get_config() == kopt.optimizers.Adam().get_config()


@pytest.mark.parametrize("name", ["Adam", "ADAM", "aDaM"])
def test_get_is_case_insensitive(name):
    opt = kopt.optimizers.get(name)
    assert type(opt) is kopt.optimizers.Adam
    assert opt.get_config() == kopt.optimizers.Adam().get_config()


@pytest.mark.parametrize("name,cls", [("sgd", "SGD"), ("RMSprop", "RMSprop"), ("adamw", "AdamW")])
def test_get_other_names(name, cls):
    assert type(kopt.optimizers.get(name)) is getattr(kopt.optimizers, cls)


def test_get_config_dict_identifier():
    opt = kopt.optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.5, "beta_1": 0.8}})
    assert type(opt) is kopt.optimizers.Adam
    expected = kopt.optimizers.Adam(learning_rate=0.5, beta_1=0.8).get_config()
    assert opt.get_config() == expected


def test_get_instance_identifier_is_returned_as_is():
    opt = kopt.optimizers.SGD(0.3)
    assert kopt.optimizers.get(opt) is opt


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        kopt.optimizers.get("adamm")
    message = str(info.value)
    assert "adamm" in message
    for valid in ("adam", "sgd", "rmsprop", "adamw"):
        assert valid in message.lower()


# --------------------------------------------------------------------------- schedules
# keras.io/api/optimizers/learning_rate_schedules: "lr_schedule = ExponentialDecay(
# initial_learning_rate=1e-2, decay_steps=10000, decay_rate=0.9); optimizer =
# keras.optimizers.SGD(learning_rate=lr_schedule)"


def test_sgd_with_exponential_decay_trains():
    schedule = kopt.optimizers.schedules.ExponentialDecay(1e-2, 10000, 0.9)
    opt = kopt.optimizers.SGD(learning_rate=schedule)
    variables = dense_variables()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 20)).astype(np.float32)
    y = x @ rng.standard_normal((20, 10)).astype(np.float32)
    value_and_grad = jax.jit(jax.value_and_grad(dense_mse))
    losses = []
    for _ in range(30):
        loss, grads = value_and_grad([v.value for v in variables], x, y)
        losses.append(float(loss))
        opt.apply_gradients(zip(grads, variables))
    assert int(opt.iterations) == 30
    # Full-batch gradient descent with a small rate: the loss falls at every step.
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0]
    # The rate the next update uses is the schedule at the current step.
    np.testing.assert_allclose(float(opt.learning_rate), float(schedule(30)), rtol=1e-6)


# --------------------------------------------------------------------------- custom loop
# keras.io/api/optimizers "Usage in a custom training loop": for each batch, compute the
# loss and grads, then `optimizer.apply_gradients(zip(grads, model.trainable_variables))`.


def test_custom_training_loop_mlp():
    rng = np.random.default_rng(0)
    variables = [
        kopt.Variable(rng.standard_normal((8, 16)).astype(np.float32) * 0.3, name="dense/kernel"),
        kopt.Variable(np.zeros((16,), np.float32), name="dense/bias"),
        kopt.Variable(rng.standard_normal((16, 1)).astype(np.float32) * 0.3, name="dense_1/kernel"),
        kopt.Variable(np.zeros((1,), np.float32), name="dense_1/bias"),
    ]
    x = rng.standard_normal((128, 8)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal((8, 1)).astype(np.float32))

    def loss_fn(values, x, y):
        w1, b1, w2, b2 = values
        hidden = jax.nn.relu(x @ w1 + b1[None, :])
        return jnp.mean(jnp.square(hidden @ w2 + b2[None, :] - y))

    opt = kopt.optimizers.Adam(learning_rate=1e-2)
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for step in range(40):
        loss, grads = value_and_grad([v.value for v in variables], x, y)
        losses.append(float(loss))
        opt.apply_gradients(zip(grads, variables))
        assert int(opt.iterations) == step + 1
    final = float(value_and_grad([v.value for v in variables], x, y)[0])
    assert final < 0.5 * losses[0]
    assert all(np.isfinite(losses))


# --------------------------------------------------------------------------- weight layout

LAYOUT_CASES = {
    "SGD": lambda: kopt.optimizers.SGD(learning_rate=0.1, momentum=0.9),
    "SGD_plain": lambda: kopt.optimizers.SGD(learning_rate=0.1, momentum=0.0),
    "RMSprop": lambda: kopt.optimizers.RMSprop(learning_rate=0.1),
    "RMSprop_centered_momentum": lambda: kopt.optimizers.RMSprop(
        learning_rate=0.1, momentum=0.5, centered=True
    ),
    "Adam": lambda: kopt.optimizers.Adam(learning_rate=0.1),
    "Adam_amsgrad": lambda: kopt.optimizers.Adam(learning_rate=0.1, amsgrad=True),
}


def _first_step_slot(slot, g, sgd):
    """The slot after one step from the zero state with the options of LAYOUT_CASES (float64)."""
    lr, rho, eps = 0.1, 0.9, 1e-7
    if slot == "momentum" and sgd:  # SGD velocity: momentum * 0 - lr * g
        return -lr * g
    if slot == "rms":
        return (1 - rho) * g**2
    if slot == "mg":
        return (1 - rho) * g
    if slot == "momentum":  # RMSprop centered: velocity holds the (positive) increment
        return lr * g / np.sqrt((1 - rho) * g**2 - ((1 - rho) * g) ** 2 + eps)
    if slot == "m":
        return 0.1 * g
    if slot in ("v", "vhat"):
        return 0.001 * g**2
    raise AssertionError(slot)


@pytest.fixture(scope="module")
def legacy_layout():
    if not LAYOUT_PATH.exists():
        pytest.skip(f"reference file {LAYOUT_PATH} is not in this checkout")
    with open(LAYOUT_PATH) as f:
        return json.load(f)


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_get_weights_matches_legacy_layout(case, legacy_layout):
    expected = legacy_layout[case]
    opt = LAYOUT_CASES[case]()
    variables = dense_variables()
    rng = np.random.default_rng(0)
    grads = {
        "kernel": rng.normal(size=(20, 10)).astype(np.float32),
        "bias": rng.normal(size=(10,)).astype(np.float32),
    }
    opt.apply_gradients(zip([grads["kernel"], grads["bias"]], variables))
    weights = opt.get_weights()

    assert len(weights) == len(expected), [name for name, _ in expected]
    assert [tuple(w.shape) for w in weights] == [tuple(shape) for _, shape in expected]
    assert expected[0][0] == "iter:0"
    assert np.issubdtype(weights[0].dtype, np.integer) and int(weights[0]) == 1
    # The order is the legacy one, slot by slot: check each entry holds the named slot.
    for (name, _), w in zip(expected[1:], weights[1:]):
        var_name, slot = name[: -len(":0")].split("/")
        want = _first_step_slot(slot, grads[var_name].astype(np.float64), sgd=case.startswith("SGD"))
        np.testing.assert_allclose(w, want, rtol=2e-5, atol=1e-7, err_msg=name)
    # `variables` (Keras 3's order: iteration, learning_rate, then each variable's slots)
    # holds the same arrays as get_weights plus the learning rate.
    variables = opt.variables
    assert [v.name for v in variables[:2]] == ["iteration", "learning_rate"]
    assert len(variables) == len(weights) + 1 == len(opt.weights)
    rest = sorted(np.asarray(v).tobytes() for v in variables[2:])
    assert rest == sorted(w.tobytes() for w in weights[1:])
