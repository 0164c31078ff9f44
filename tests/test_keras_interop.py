"""Keras 3 on the JAX backend (issue 6, section 2).

- The Keras documentation's custom training loop (gradients from `jax.grad` of
  `model.stateless_call`) with a kopt optimizer updating `model.trainable_variables` in
  place, against the same loop with `keras.optimizers.Adam`.
- `model.compile(optimizer=kopt.interop.keras.wrap(opt))` and `model.fit`: the same
  weights as kopt's own stateful loop and as Keras's optimizer, EMA included; the state
  round trip through `model.save`/`load_model`; the wrapper's learning rate, weights and
  config; a `LossScaleOptimizer` (mixed precision) around the wrapper.
- `import kopt` loads none of the optional libraries.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

import kopt

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("kopt.interop.keras needs KERAS_BACKEND=jax", allow_module_level=True)

import kopt.interop.keras as kopt_keras  # noqa: E402

BATCH, SAMPLES, EPOCHS = 16, 32, 2
STEPS = EPOCHS * SAMPLES // BATCH


@pytest.fixture(autouse=True)
def keras_promotion():
    # Keras's layers broadcast biases and mix Python scalars: standard JAX semantics.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def make_model():
    def init(seed):
        return keras.initializers.GlorotUniform(seed=seed)

    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu", kernel_initializer=init(0)),
        keras.layers.Dense(1, kernel_initializer=init(1)),
    ])


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((SAMPLES, 4)).astype(np.float32),
            rng.standard_normal((SAMPLES, 1)).astype(np.float32))


def batches():
    x, y = data()
    for _ in range(EPOCHS):
        for i in range(0, SAMPLES, BATCH):
            yield x[i:i + BATCH], y[i:i + BATCH]


def grad_function(model):
    """The Keras docs' JAX recipe: differentiate a loss of `model.stateless_call`."""
    loss_fn = keras.losses.MeanSquaredError()

    def compute_loss(trainable, non_trainable, x, y):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x)
        return loss_fn(y, y_pred)

    grad_fn = jax.jit(jax.grad(compute_loss))
    return lambda x, y: grad_fn([v.value for v in model.trainable_variables],
                                [v.value for v in model.non_trainable_variables], x, y)


def custom_loop(model, opt):
    grads_of = grad_function(model)
    for x, y in batches():
        opt.apply_gradients(zip(grads_of(x, y), model.trainable_variables))


def weights_of(model):
    return [np.array(v.value) for v in model.trainable_variables]


def assert_weights_close(a, b, rtol, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


EMA = dict(use_ema=True, ema_momentum=0.5)


@pytest.fixture(scope="module")
def custom_loop_run():
    """The docs' custom loop with kopt's Adam (EMA on): (model, optimizer, initial weights)."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        model = make_model()
        initial = weights_of(model)
        variables = list(model.trainable_variables)
        opt = kopt.optimizers.Adam(0.05, **EMA)
        custom_loop(model, opt)
        assert all(a is b for a, b in zip(model.trainable_variables, variables))
        opt.finalize_variable_values(model.trainable_variables)   # what fit does at its end
    return model, opt, initial


def test_custom_training_loop_updates_keras_variables_in_place(custom_loop_run):
    model, opt, initial = custom_loop_run
    assert not any(np.allclose(a, b) for a, b in zip(weights_of(model), initial))
    assert int(opt.iterations) == STEPS
    n = len(model.trainable_variables)
    assert len(opt.get_weights()) == 1 + 3 * n   # iterations, then m, v and ema of each


def test_fit_with_wrapped_optimizer_matches_custom_loop_and_keras(custom_loop_run):
    """fit with `wrap(Adam(use_ema=True))` = kopt's own loop (+ finalize) = Keras's fit.

    Keras's optimizer enters only here, through fit: its eager `apply` compiles every
    small op separately, which is slow on CPU.
    """
    loop_model, loop_opt, _ = custom_loop_run
    x, y = data()

    def fit(optimizer):
        model = make_model()
        model.compile(loss="mse", optimizer=optimizer)
        history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        return model, history

    wrapped = kopt_keras.wrap(kopt.optimizers.Adam(0.05, **EMA))
    model, history = fit(wrapped)
    assert isinstance(wrapped, keras.optimizers.Optimizer)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(wrapped.iterations) == STEPS
    # The same update inside Keras's compiled train step: equal up to XLA's fusion.
    assert_weights_close(weights_of(model), weights_of(loop_model), rtol=1e-6, atol=1e-7)
    # fit's end synced kopt's state (and loaded the moving averages into the model).
    kopt_opt = wrapped.kopt_optimizer
    assert int(kopt_opt.iterations) == STEPS
    for a, b in zip(kopt_opt.get_weights(), loop_opt.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    keras_model, _ = fit(keras.optimizers.Adam(0.05, **EMA))
    assert_weights_close(weights_of(model), weights_of(keras_model), rtol=1e-5, atol=1e-6)


def test_wrapper_state_survives_model_save_and_load(tmp_path):
    x, y = data()
    model = make_model()
    model.compile(loss="mse", optimizer=kopt_keras.wrap(kopt.optimizers.SGD(0.1, momentum=0.9)))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, kopt_keras.KoptOptimizer)
    saved_opt, loaded_opt = model.optimizer.kopt_optimizer, loaded.optimizer.kopt_optimizer
    assert isinstance(loaded_opt, kopt.optimizers.SGD)
    assert loaded_opt.get_config() == saved_opt.get_config()
    assert int(loaded_opt.iterations) == SAMPLES // BATCH
    for a, b in zip(loaded_opt.get_weights(), saved_opt.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrapper_learning_rate_weights_and_errors():
    model = make_model()
    variables = model.trainable_variables
    # Bucketing off, so each momentum is a Keras variable of its own (with the default,
    # the small momenta share one bucket variable).
    inner = kopt.optimizers.SGD(0.1, momentum=0.9, bucket_threshold=0)
    wrapped = kopt_keras.wrap(inner, name="kopt_sgd")
    assert wrapped.name == "kopt_sgd" and float(wrapped.learning_rate) == pytest.approx(0.1)
    wrapped.build(variables)
    # Keras iteration counter, then kopt's state: count, learning rate, one momentum each.
    assert len(wrapped.variables) == 3 + len(variables)
    assert [v.name for v in wrapped.variables[:4]] == [
        "iteration", "count", "learning_rate", variables[0].path.replace("/", "_") + "_momentum"]

    grads = [np.ones(v.shape, np.float32) for v in variables]
    before = weights_of(model)
    wrapped.learning_rate = 0.05
    assert float(inner.learning_rate) == pytest.approx(0.05)
    wrapped.apply_gradients(zip(grads, variables))   # eager: kopt's compiled step
    for b, a in zip(before, weights_of(model)):
        np.testing.assert_allclose(a, b - 0.05, rtol=1e-6, atol=1e-6)
    assert int(wrapped.iterations) == 1 and int(inner.iterations) == 1

    # get/set_weights use kopt's (legacy tf.keras) layout: iterations, then momenta.
    weights = wrapped.get_weights()
    assert len(weights) == 1 + len(variables)
    weights[0] = np.asarray(5, np.int64)
    wrapped.set_weights(weights)
    assert int(wrapped.iterations) == 5 and int(wrapped.kopt_optimizer.iterations) == 5
    with pytest.raises(ValueError, match="expected a list of"):
        wrapped.set_weights(weights[:-1])

    config = wrapped.get_config()
    clone = kopt_keras.KoptOptimizer.from_config(config)
    assert clone.get_config() == config
    assert isinstance(kopt_keras.wrap("adam").kopt_optimizer, kopt.optimizers.Adam)
    with pytest.raises(TypeError, match="expects a kopt optimizer"):
        kopt_keras.wrap(keras.optimizers.Adam())


def test_loss_scale_optimizer_around_the_wrapper_in_a_jitted_step():
    """Under a mixed_float16 policy, compile() wraps the optimizer in a LossScaleOptimizer;
    fit then calls its stateless_apply, which calls ours with our own Keras variables."""
    variables = [keras.Variable(np.ones(s, np.float32)) for s in ((3,), (2,))]
    wrapped = kopt_keras.wrap(kopt.optimizers.SGD(0.1))
    lso = keras.optimizers.LossScaleOptimizer(wrapped, initial_scale=8.0)
    lso.build(variables)
    step = jax.jit(lso.stateless_apply)
    opt_values, values = [v.value for v in lso.variables], [v.value for v in variables]
    inner = slice(len(lso.variables) - len(wrapped.variables), None)   # wrapped's, at the end

    scaled = [np.full(v.shape, 8.0, np.float32) for v in variables]   # gradients 1, scaled by 8
    new_values, new_opt = step(opt_values, scaled, values)
    for x in new_values:
        np.testing.assert_allclose(x, 0.9, rtol=1e-6)
    assert [int(x) for x in new_opt[inner][:2]] == [1, 1]   # Keras's iteration, kopt's count

    scaled[0][0] = np.inf   # a non-finite step is skipped and the scale halved
    new_values, new_opt = step(opt_values, scaled, values)
    for x in new_values:
        np.testing.assert_array_equal(x, 1.0)
    assert [int(x) for x in new_opt[inner][:2]] == [0, 0]


def test_importing_kopt_loads_no_optional_library():
    code = ("import sys, kopt, kopt.interop; "
            "print(sorted(m for m in ('keras', 'flax', 'orbax', 'optax', 'tensorflow') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("make", ["optax", "kopt"])
def test_wrap_of_a_bare_transform_points_to_from_transform(make):
    """issue 13, item 18: a transform needs the stateful facade before `wrap`."""
    optax = pytest.importorskip("optax")
    tx = optax.adam(0.1) if make == "optax" else kopt.functional.adam(0.1)
    with pytest.raises(TypeError, match=r"Optimizer\.from_transform\(tx\)") as info:
        kopt_keras.wrap(tx)
    assert type(tx).__name__ in str(info.value)
    # The route it names works.
    wrapped = kopt_keras.wrap(kopt.optimizers.Optimizer.from_transform(tx))
    assert isinstance(wrapped, keras.optimizers.Optimizer)
