"""Keras 3's documented contract for the stateful optimizer, checked against Keras itself.

`optimizer.variables` and `optimizer.iterations` are variable-like, `stateless_apply`
takes Keras's flat list of optimizer variables (so Keras's guide "Writing a training loop
from scratch in JAX" runs with kopt's Adam), `variable.constraint` is applied after a
step, and `build([])` builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt

keras = pytest.importorskip("keras")


def _pair(cls_name, **kwargs):
    return getattr(kopt.optimizers, cls_name)(**kwargs), getattr(keras.optimizers, cls_name)(**kwargs)


def _keras_vars(prefix):
    return [keras.Variable(np.ones((3, 2), np.float32), name=f"{prefix}w"),
            keras.Variable(np.ones((2,), np.float32), name=f"{prefix}b")]


@pytest.mark.parametrize("cls_name,kwargs", [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("SGD", dict(learning_rate=0.1)),
    ("Adam", dict(learning_rate=0.1)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("Adam", dict(learning_rate=0.1, use_ema=True, gradient_accumulation_steps=2)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    ("Ftrl", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1)),
])
def test_variables_follow_keras(cls_name, kwargs):
    """Same number of variables as Keras, same names for the counter, the rate and each
    variable's slots, same values after a step (each a variable-like object)."""
    ours, theirs = _pair(cls_name, **kwargs)
    mine, keras_vars = _keras_vars(""), _keras_vars("")
    grads = [np.full((3, 2), 0.5, np.float32), np.full((2,), -0.25, np.float32)]
    ours.apply(grads, mine)
    theirs.apply(grads, keras_vars)
    assert len(ours.variables) == len(theirs.variables)
    assert [v.name for v in ours.variables] == [v.name for v in theirs.variables]
    for a, b in zip(ours.variables, theirs.variables):
        assert a.path.endswith("/" + a.name)
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), np.asarray(b.value), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(a), np.asarray(a.value), rtol=0)


def test_schedule_rate_is_not_a_variable():
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    ours = kopt.optimizers.Adam(kopt.schedules.ExponentialDecay(0.1, 10, 0.5))
    theirs = keras.optimizers.Adam(sched)
    ours.build(_keras_vars(""))
    theirs.build(_keras_vars(""))
    assert [v.name for v in ours.variables] == [v.name for v in theirs.variables]


def test_iterations_is_variable_like():
    opt = kopt.optimizers.SGD(0.1)
    v = kopt.Variable(np.ones(3, np.float32), name="w")
    assert int(opt.iterations) == 0
    opt.apply([jnp.ones(3)], [v])
    it = opt.iterations
    assert int(it) == 1 and it.numpy() == 1 and int(it.value) == 1
    assert it.name == "iteration" and it.path == "sgd/iteration"
    assert it + 1 == 2 and 10 % (it + 1) == 0 and f"{it}" == "1"
    assert np.asarray(it).dtype == np.int32
    opt.apply([jnp.ones(3)], [v])
    assert int(it) == 2   # a live view


def test_optimizer_variables_assign_writes_the_state():
    opt = kopt.optimizers.SGD(0.1, momentum=0.9)
    v = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.apply([jnp.ones(3)], [v])
    momentum = opt.variables[2]
    momentum.assign(np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(opt.get_weights()[1], np.full(3, 2.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        momentum.assign(np.ones(4, np.float32))
    opt.variables[1].assign(0.5)
    assert float(opt.learning_rate) == 0.5
    with pytest.raises(ValueError, match=r"in \[0, "):
        opt.variables[0].assign(-1)
    assert int(opt.iterations) == 1


def test_build_with_no_variables_and_empty_before_build():
    opt = kopt.optimizers.Adam()
    assert opt.variables == []
    opt.build([])
    assert opt.built
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate"]


def test_set_weights_before_build_uses_keras_message():
    with pytest.raises(ValueError, match="has not yet been built"):
        kopt.optimizers.Adam().set_weights([np.zeros((), np.int32)])


def test_constraint_is_applied_after_the_step():
    v = keras.Variable(np.array([0.05, 1.0], np.float32), name="w")
    kv = keras.Variable(np.array([0.05, 1.0], np.float32), name="w")
    v.constraint = kv.constraint = keras.constraints.NonNeg()   # as Layer.add_weight does
    grads = [np.array([1.0, 1.0], np.float32)]
    kopt.optimizers.SGD(0.1).apply(grads, [v])
    keras.optimizers.SGD(0.1).apply(grads, [kv])
    np.testing.assert_allclose(np.asarray(v.value), [0.0, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(v.value), np.asarray(kv.value))
    w = kopt.Variable(np.array([0.05, 1.0], np.float32), name="w",
                      constraint=lambda x: jnp.clip(x, 0.0, None))
    kopt.optimizers.SGD(0.1).apply(grads, [w])
    np.testing.assert_allclose(np.asarray(w), [0.0, 0.9], rtol=1e-6)


def _guide_model():
    inputs = keras.Input(shape=(16,), name="digits")
    x = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(4, name="predictions")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def _run_guide(optimizer, steps=5):
    with jax.numpy_rank_promotion("allow"):   # Keras's Dense adds its bias by broadcasting
        return _run_guide_as_written(optimizer, steps)


def _run_guide_as_written(optimizer, steps):
    """Keras's guide "Writing a training loop from scratch in JAX", as written, except
    that the model's variables go in as their values (`v.value`): JAX >= 0.8 no longer
    converts `keras.Variable`s inside jit, for Keras's own optimizers either."""
    keras.utils.set_random_seed(0)
    model = _guide_model()
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)

    def compute_loss_and_updates(trainable_variables, non_trainable_variables, x, y):
        y_pred, non_trainable_variables = model.stateless_call(
            trainable_variables, non_trainable_variables, x)
        loss = loss_fn(y, y_pred)
        return loss, non_trainable_variables

    grad_fn = jax.value_and_grad(compute_loss_and_updates, has_aux=True)

    @jax.jit
    def train_step(state, data):
        trainable_variables, non_trainable_variables, optimizer_variables = state
        x, y = data
        (loss, non_trainable_variables), grads = grad_fn(
            trainable_variables, non_trainable_variables, x, y)
        trainable_variables, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable_variables)
        return loss, (trainable_variables, non_trainable_variables, optimizer_variables)

    optimizer.build(model.trainable_variables)
    trainable_variables = [v.value for v in model.trainable_variables]
    non_trainable_variables = [v.value for v in model.non_trainable_variables]
    optimizer_variables = [v.value for v in optimizer.variables]
    state = trainable_variables, non_trainable_variables, optimizer_variables
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        data = (rng.normal(size=(32, 16)).astype("float32"),
                np.eye(4, dtype="float32")[rng.integers(0, 4, 32)])
        loss, state = train_step(state, data)
        losses.append(float(loss))
    trainable_variables, non_trainable_variables, optimizer_variables = state
    for variable, value in zip(model.trainable_variables, trainable_variables):
        variable.assign(value)
    return losses, optimizer_variables


def test_keras_jax_training_loop_guide_runs_with_kopt_adam():
    ours, ours_state = _run_guide(kopt.optimizers.Adam(learning_rate=1e-3))
    theirs, theirs_state = _run_guide(keras.optimizers.Adam(learning_rate=1e-3))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert len(ours_state) == len(theirs_state)
    for a, b in zip(ours_state, theirs_state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_optimizer_variables_pass_through_jit_as_the_guide_does():
    """The guide passes `optimizer.variables` themselves into the jitted step."""
    opt = kopt.optimizers.Adam(0.1)
    w = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.build([w])
    step = jax.jit(lambda ov, g, tv: opt.stateless_apply(ov, g, tv))
    (new_w,), new_opt = step(opt.variables, [jnp.ones(3)], [w.value])
    twin = kopt.optimizers.Adam(0.1)
    tw = kopt.Variable(np.ones(3, np.float32), name="w")
    twin.apply([jnp.ones(3)], [tw])
    np.testing.assert_allclose(np.asarray(new_w), np.asarray(tw), rtol=1e-6)
    for var, value in zip(opt.variables, new_opt):
        var.assign(value)
    for a, b in zip(opt.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("bad", [{"m": 1}, "state", 3.0])
def test_stateless_apply_names_a_wrong_state(bad):
    opt = kopt.optimizers.Adam(0.1)
    w = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.build([w])
    with pytest.raises(ValueError, match="optimizer_variables"):
        opt.stateless_apply(bad, [jnp.ones(3)], [w.value])
    with pytest.raises(ValueError, match="optimizer_variables"):
        opt.stateless_apply([1.0], [jnp.ones(3)], [w.value])


def test_kopt_state_form_still_works():
    opt = kopt.optimizers.Adam(0.1)
    w = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.build([w])
    values, state = jax.jit(opt.stateless_apply)(opt.state, [jnp.ones(3)], [w.value])
    assert int(state.count) == 1 and values[0].shape == (3,)


def test_zero_argument_callable_learning_rate_in_the_stateful_layer():
    """Keras's documented form, `SGD(learning_rate=lambda: 0.1)`; a wrong arity is refused
    at construction, naming `learning_rate`."""
    opt = kopt.optimizers.SGD(learning_rate=lambda: 0.1)
    w = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.apply([jnp.ones(3)], [w])
    np.testing.assert_allclose(np.asarray(w), np.full(3, 0.9), rtol=1e-6)
    assert float(opt.learning_rate) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        kopt.optimizers.SGD(learning_rate=lambda step, other: 0.1)


def test_array_learning_rate_is_a_settable_number():
    """`opt.learning_rate` returns a 0-d array; passing one (numpy or jax) back stores a
    number that the setter can change."""
    opt = kopt.optimizers.SGD(learning_rate=jnp.asarray(0.1))
    w = kopt.Variable(np.ones(3, np.float32), name="w")
    opt.apply([jnp.ones(3)], [w])
    opt.learning_rate = 0.5
    opt.apply([jnp.ones(3)], [w])
    np.testing.assert_allclose(np.asarray(w), np.full(3, 0.4), rtol=1e-6)
    again = kopt.optimizers.SGD(learning_rate=opt.learning_rate)
    assert again.get_config()["learning_rate"] == 0.5
