"""Non-finite gradients (issue #8 section 3): `skip_nonfinite` and `LossScaleOptimizer`.

- `skip_nonfinite` over a gradient sequence with NaN and Inf steps gives exactly the inner
  transform run on the finite steps only, counts skipped steps, compiles once and keeps the
  state's structure and dtypes; `max_consecutive` lets the (N+1)-th bad step through;
  it wraps optax transforms and kopt's gradient accumulation.
- `LossScaleOptimizer` matches `keras.optimizers.LossScaleOptimizer` step for step over a
  sequence with Inf and NaN gradients (variables, scale, iterations, inner slots), proxies
  `iterations` and `learning_rate`, keeps the inner optimizer's state current, and its
  `minimize`, `stateless_apply` and weights/config agree with `apply_gradients`.
"""

from __future__ import annotations

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.functional.nonfinite import LossScaleState, dynamic_loss_scale, skip_nonfinite
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from tests.helpers import assert_trees_equal, jit_max_traces

SHAPES = {"kernel": (4, 3), "bias": (3,)}
BAD_STEPS = {2: np.inf, 5: np.nan, 6: -np.inf}   # step -> value written into one gradient


def _grad_sequence(steps, seed=0, scale=1.0, bad=BAD_STEPS):
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        g = {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        if t in bad:
            g["kernel" if t % 2 else "bias"][0] = bad[t]
        seq.append(g)
    return seq


def _params(seed=1):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}


def _avals(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------- skip_nonfinite


def test_skip_nonfinite_equals_inner_on_the_finite_steps():
    inner = kopt.functional.adam(0.05, clipnorm=1.0)
    tx = skip_nonfinite(inner)
    seq = _grad_sequence(9)
    params = ref_params = _params()
    state, ref_state = tx.init(params), inner.init(params)
    avals = _avals(state)

    step = jit_max_traces(lambda g, s, p: tx.update(g, s, p))
    ref_step = jax.jit(lambda g, s, p: inner.update(g, s, p))
    for t, g in enumerate(seq):
        updates, state = step(g, state, params)
        params = kopt.functional.apply_updates(params, updates)
        if t in BAD_STEPS:
            for u in jax.tree.leaves(updates):
                np.testing.assert_array_equal(np.asarray(u), 0.0)
        else:
            ref_updates, ref_state = ref_step(g, ref_state, ref_params)
            ref_params = kopt.functional.apply_updates(ref_params, ref_updates)
        assert _avals(state) == avals
        assert_trees_equal(params, ref_params)
        assert_trees_equal(state.inner, ref_state)

    assert int(state.skipped) == len(BAD_STEPS)
    assert int(state.consecutive) == 0   # the last step was finite
    assert int(kopt.functional.iteration_count(state)) == len(seq) - len(BAD_STEPS)


def test_skip_nonfinite_counts_and_max_consecutive_under_scan():
    """In one `lax.scan`: consecutive counts, and with max_consecutive=2 the third bad step
    in a row is applied (the params become NaN)."""
    inner = kopt.functional.sgd(0.1)
    tx = skip_nonfinite(inner, max_consecutive=2)
    flags = jnp.array([1, 0, 0, 1, 0, 0, 0, 1], bool)   # 1 = finite
    grads = jnp.where(flags[:, None], 1.0, jnp.nan) * jnp.ones((8, 2), jnp.float32)

    def body(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        params = kopt.functional.apply_updates(params, updates)
        return (params, state), (state.consecutive, state.skipped, state.count, params[0])

    params = jnp.zeros((2,), jnp.float32)
    _, (consecutive, skipped, count, p0) = jax.lax.scan(body, (params, tx.init(params)), grads)
    assert consecutive.tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert skipped.tolist() == [0, 1, 2, 2, 3, 4, 4, 4]
    assert count.tolist() == [1, 1, 1, 2, 2, 2, 3, 4]
    np.testing.assert_allclose(np.asarray(p0[:6]), [-0.1, -0.1, -0.1, -0.2, -0.2, -0.2], rtol=1e-6)
    assert np.isnan(np.asarray(p0[6:])).all()


def test_skip_nonfinite_counts_real_updates_with_accumulation_and_wraps_optax():
    optax = pytest.importorskip("optax")
    seq = _grad_sequence(6, bad={1: np.nan})
    params = _params()

    # Gradient accumulation inside: `count` is the inner count of real updates.
    tx = skip_nonfinite(kopt.functional.sgd(0.1, gradient_accumulation_steps=2))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in seq:
        _, state = step(g, state, params)
    # 5 finite calls reach the inner transform: real updates after calls 2 and 4.
    assert int(kopt.functional.iteration_count(state)) == 2
    assert int(state.skipped) == 1

    # An optax inner without a count: `count` is the number of finite steps, and the
    # inner state is optax's own, untouched on the skipped step.
    with jax.numpy_dtype_promotion("standard"):   # optax's Adam mixes int and float
        tx = skip_nonfinite(optax.adam(0.1))
        state, ref_state = tx.init(params), optax.adam(0.1).init(params)
        step, ref_step = jax.jit(tx.update), jax.jit(optax.adam(0.1).update)
        for g in seq:
            updates, state = step(g, state, params)
            if not all(np.isfinite(x).all() for x in jax.tree.leaves(g)):
                continue
            ref_updates, ref_state = ref_step(g, ref_state, params)
            assert_trees_equal(updates, ref_updates)
    assert_trees_equal(state.inner, ref_state)
    assert int(state.count) == 5 and int(state.skipped) == 1


# --------------------------------------------------------------------------- LossScaleOptimizer


def _keras_run(keras, params, seq, initial_scale, growth):
    """Keras 3's LossScaleOptimizer(Adam) through its (jitted) stateless_apply."""
    opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.01), initial_scale=initial_scale, dynamic_growth_steps=growth)
    variables = [keras.Variable(np.asarray(params[k])) for k in SHAPES]
    opt.build(variables)
    # Label Keras's variables by identity: their paths carry process-wide counters
    # ("loss_scale_optimizer_1/...", "variable_3_momentum") that depend on test order.
    inner = opt.inner_optimizer
    labels = {id(opt.dynamic_scale): "dynamic_scale", id(opt.step_counter): "step_counter",
              id(inner.iterations): "iteration",
              id(inner._momentums[0]): "m0", id(inner._momentums[1]): "m1"}
    names = [labels.get(id(v), v.path) for v in opt.variables]
    with jax.numpy_dtype_promotion("standard"):
        step = jax.jit(opt.stateless_apply)
        opt_vals = [v.value for v in opt.variables]
        values = [v.value for v in variables]
        out = []
        for g in seq:
            values, opt_vals = step(opt_vals, [jnp.asarray(g[k]) for k in SHAPES], values)
            named = dict(zip(names, (np.asarray(x) for x in opt_vals)))
            out.append(([np.asarray(v) for v in values], named))
    return out, opt.get_config()


def test_loss_scale_optimizer_matches_keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    initial_scale, growth = 64.0, 3
    seq = _grad_sequence(12, scale=initial_scale, bad={2: np.inf, 7: np.nan, 8: np.inf})
    params = _params()
    expected, keras_config = _keras_run(keras, params, seq, initial_scale, growth)

    variables = [kopt.Variable(params[k], name=k) for k in SHAPES]
    opt = LossScaleOptimizer(kopt.optimizers.Adam(0.01), initial_scale=initial_scale,
                             dynamic_growth_steps=growth)
    scales = []
    for g, (values, named) in zip(seq, expected):
        opt.apply_gradients(zip([g[k] for k in SHAPES], variables))
        for v, want in zip(variables, values):
            np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, atol=1e-7)
        assert float(opt.dynamic_scale) == float(named["dynamic_scale"])
        assert int(opt.get_weights()[1]) == int(named["step_counter"])
        assert int(opt.iterations) == int(named["iteration"])
        m = opt.inner_optimizer.get_weights()[1:3]
        np.testing.assert_allclose(m[0], named["m0"], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(m[1], named["m1"], rtol=1e-6, atol=1e-8)
        scales.append(float(opt.dynamic_scale))
    # The sequence exercised halving, growth and the reset of the counter.
    assert scales == [64, 64, 32, 32, 32, 64, 64, 32, 16, 16, 16, 32]
    assert int(opt.iterations) == 9
    assert opt._step._cache_size() == 1
    # Keras's config (with its serialised inner Adam) builds the same optimizer.
    ours = LossScaleOptimizer.from_config(keras_config).get_config()
    theirs_inner = dict(ours["inner_optimizer"]["config"])
    mine_inner = dict(opt.get_config()["inner_optimizer"]["config"])
    # Keras reports the float32 value of its learning-rate variable.
    assert theirs_inner.pop("learning_rate") == pytest.approx(mine_inner.pop("learning_rate"))
    # Keras numbers its default names per process ("adam_1" after another Adam).
    assert theirs_inner.pop("name").startswith("adam") and mine_inner.pop("name") == "adam"
    assert theirs_inner == mine_inner
    assert {k: ours[k] for k in ("initial_scale", "dynamic_growth_steps")} == {
        "initial_scale": initial_scale, "dynamic_growth_steps": growth}


def test_loss_scale_optimizer_api_and_proxies():
    inner = kopt.optimizers.SGD(learning_rate=0.5, momentum=0.5, loss_scale_factor=4.0)
    opt = LossScaleOptimizer(inner, initial_scale=8.0, dynamic_growth_steps=2)
    assert inner.loss_scale_factor is None   # as Keras: no double unscaling
    assert opt.inner_optimizer is inner and opt.name == "loss_scale_optimizer"
    assert float(opt.scale_loss(jnp.float32(3.0))) == 24.0   # initial_scale before build
    assert opt.scale_loss(jnp.float16(1.0)).dtype == jnp.float32   # no f16 overflow
    assert float(opt.learning_rate) == 0.5

    w = kopt.Variable(jnp.ones((3,), jnp.float32), name="w")
    g = jnp.full((3,), 8.0, jnp.float32)   # the gradient of a loss scaled by 8
    opt.apply_gradients([(g, w)])
    np.testing.assert_allclose(w.numpy(), 0.5)   # 1 - 0.5 * 8 / 8
    assert int(opt.iterations) == int(inner.iterations) == 1

    opt.learning_rate = 0.25   # proxied, no recompile
    assert float(inner.learning_rate) == 0.25
    opt.apply_gradients([(jnp.full((3,), jnp.nan, jnp.float32), w)])   # skipped
    np.testing.assert_allclose(w.numpy(), 0.5)
    assert int(opt.iterations) == 1 and float(opt.dynamic_scale) == 4.0
    opt.apply_gradients([(g, w)])   # unscaled by 4: momentum -0.5*... and lr 0.25
    assert int(opt.iterations) == 2
    assert opt._step._cache_size() == 1

    weights = opt.get_weights()
    assert [w_.shape for w_ in weights] == [(), (), (), (3,)]
    assert int(weights[0]) == 2 and int(weights[1]) == 1 and float(weights[2]) == 4.0
    assert_trees_equal(weights[3:], inner.get_weights()[1:])
    assert float(opt.scale_loss(1.0)) == 4.0

    # A new schedule on the inner optimizer is followed (the step is rebuilt).
    opt.learning_rate = kopt.schedules.ExponentialDecay(0.1, 1, 0.5)
    opt.apply_gradients([(g, w)])
    assert int(opt.iterations) == 3 and float(opt.learning_rate) == pytest.approx(0.1 * 0.5**3)

    config = opt.get_config()
    clone = LossScaleOptimizer.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config and type(clone.inner_optimizer) is kopt.optimizers.SGD
    again = kopt.optimizers.serialize(opt)
    assert again["class_name"] == "LossScaleOptimizer" and again["config"] == config


def test_loss_scale_minimize_agrees_with_stateless_apply_in_jit():
    """`minimize` scales the loss itself; `stateless_apply` in jit, on the gradients of
    the loss times `state.dynamic_scale`, is the same step."""
    def loss_fn(values, x):
        return jnp.sum(jnp.square(values[0] * x - 1.0)) + jnp.sum(values[1] ** 2)

    x = jnp.asarray(np.linspace(0.5, 2.0, 12, dtype=np.float32).reshape(4, 3))
    params = _params()

    def make():
        variables = [kopt.Variable(params[k], name=k) for k in SHAPES]
        return LossScaleOptimizer(kopt.optimizers.Adam(0.01), initial_scale=2.0**10,
                                  dynamic_growth_steps=2), variables

    by_min, v_min = make()
    by_stateless, v_stateless = make()
    by_stateless.build(v_stateless)

    @jax.jit
    def train_step(state, values):
        scaled_grads = jax.grad(lambda vals: loss_fn(vals, x) * state.dynamic_scale)(values)
        return by_stateless.stateless_apply(state, scaled_grads, values)

    for _ in range(3):
        loss = by_min.minimize(loss_fn, v_min, x)
        values, by_stateless.state = train_step(by_stateless.state, [v.value for v in v_stateless])
        for v, value in zip(v_stateless, values):
            v.assign(value)
    for a, b in zip(v_min, v_stateless):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert float(by_min.dynamic_scale) == float(by_stateless.dynamic_scale) == 2.0**11
    assert int(by_min.iterations) == int(by_stateless.iterations) == 3
    assert float(loss) == pytest.approx(float(loss_fn([v.value for v in v_stateless], x)), rel=0.5)
    assert isinstance(by_stateless.state, LossScaleState)


def test_loss_scale_float16_overflow_is_skipped_and_the_scale_recovers():
    """Float16 params and gradients: a scaled loss that overflows to Inf is skipped and
    halves the scale until the gradients fit; the params keep their dtype."""
    w = kopt.Variable(jnp.full((3,), 4.0, jnp.float16), name="w")
    opt = LossScaleOptimizer(kopt.optimizers.SGD(0.01), initial_scale=2.0**15)
    scales = []
    for _ in range(6):
        grads = jax.grad(lambda v: opt.scale_loss(jnp.sum(v * v)).astype(jnp.float16))(w.value)
        opt.apply_gradients([(grads, w)])
        scales.append(float(opt.dynamic_scale))
    # 8 * 2**15 = 2**18 overflows float16 (max 65504) until the scale is 2**12.
    assert scales[:4] == [2.0**14, 2.0**13, 2.0**12, 2.0**12]
    assert w.dtype == jnp.float16 and int(opt.iterations) == 3
    assert np.isfinite(w.numpy()).all() and (w.numpy() < 4.0).all()


def test_dynamic_loss_scale_functional_is_jit_and_pickle_stable():
    tx = dynamic_loss_scale(kopt.functional.adam(0.01), initial_scale=4.0, dynamic_growth_steps=1)
    params = _params()
    state = tx.init(params)
    avals = _avals(state)
    step = jax.jit(tx.update)
    for g in _grad_sequence(4, bad={1: np.nan}):
        _, state = step(g, state, params)
        assert _avals(state) == avals
    assert float(state.dynamic_scale) == 16.0   # 4 x2 /2 x2 x2
    assert int(kopt.functional.iteration_count(state)) == int(state.count) == 3
    assert_trees_equal(pickle.loads(pickle.dumps(jax.device_get(state))), state)
