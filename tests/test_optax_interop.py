"""optax both ways (issue 6, section 1).

kopt transforms inside optax's combinators (`multi_transform`, `MultiSteps`), optax
transforms inside `kopt.functional.chain`, and any `(init, update)` transform in the
stateful facade through `Optimizer.from_transform` (`TransformOptimizer`): the update,
the iteration count, the learning rate, weights I/O and the errors.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.transform_optimizer import TransformOptimizer, TransformState
from tests.helpers import max_traces

optax = pytest.importorskip("optax")

# In sorted key order, so a dict of params flattens in the order of the variable list.
SHAPES = {"bias": (3,), "kernel": (4, 3)}


@pytest.fixture(autouse=True)
def standard_promotion():
    # optax mixes Python floats with its int32 step counters, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
        yield


def initial_values(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def grads_seq(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(steps)]


def make_variables(values):
    return [kopt.Variable(values[k], name=k) for k in SHAPES]


def run_functional(tx, params, seq):
    """`seq` of gradient dicts through `tx` in one jitted step; returns (params, state)."""

    @jax.jit
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return kf.apply_updates(p, updates), s

    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(params)
    for g in seq:
        params, state = step(params, state, g)
    return params, state


def run_facade(opt, variables, seq):
    for g in seq:
        opt.apply_gradients(zip([g[k] for k in SHAPES], variables))


def assert_values_equal(variables, params):
    for v in variables:
        np.testing.assert_array_equal(np.asarray(v.value), np.asarray(params[v.name]), err_msg=v.name)


# --------------------------------------------------------------------------------------
# Optimizer.from_transform


def test_from_transform_runs_optax_adam_exactly_as_optax():
    tx = optax.adam(0.05)
    seq = grads_seq(4)
    params, state = run_functional(tx, initial_values(), seq)

    opt = Optimizer.from_transform(tx, name="optax_adam")
    assert isinstance(opt, TransformOptimizer) and opt.name == "optax_adam"
    assert opt.inner_transform is tx
    variables = make_variables(initial_values())
    run_facade(opt, variables, seq)

    assert_values_equal(variables, {k: params[k] for k in SHAPES})
    # optax's Adam counts its own steps: the facade's count mirrors it.
    assert int(opt.iterations) == 4 and isinstance(opt.state, TransformState)
    assert int(kf.iteration_count(opt.state)) == 4
    # get_weights: iterations, then the inner state's leaves in flatten order (the facade
    # built it on the list of values, the loop above on the dict: the same leaves).
    weights = opt.get_weights()
    expected = [np.asarray(4)] + [np.asarray(x) for x in jax.tree.leaves(state)]
    assert len(weights) == len(expected) == 1 + len(jax.tree.leaves(opt.state.inner))
    assert weights[0].dtype == np.int32
    for w, e in zip(weights, expected):
        np.testing.assert_array_equal(w, e)
    # `transform` runs on `state`: one more functional step counts to 5.
    values = tuple(v.value for v in variables)
    _, new_state = opt.transform.update(tuple(jnp.ones_like(x) for x in values), opt.state, values)
    assert int(new_state.count) == 5


def test_a_transform_without_a_count_is_counted_by_the_facade():
    opt = Optimizer.from_transform(optax.sgd(0.1))
    variables = make_variables(initial_values())
    seq = grads_seq(3)
    run_facade(opt, variables, seq)
    expected = {k: initial_values()[k] - 0.1 * sum(g[k] for g in seq) for k in SHAPES}
    for v in variables:
        np.testing.assert_allclose(np.asarray(v.value), expected[v.name], rtol=1e-6, atol=1e-6)
    assert int(opt.iterations) == 3
    assert [w.tolist() for w in opt.get_weights()] == [3]   # sgd's state has no arrays
    opt.set_weights([np.asarray(7, np.int64)])               # e.g. a tf.keras iteration count
    assert int(opt.iterations) == 7
    with pytest.raises(ValueError, match="holds no `learning_rate`.*inject_hyperparams"):
        _ = opt.learning_rate
    with pytest.raises(ValueError, match="holds no `learning_rate`"):
        opt.learning_rate = 0.5


def test_inject_hyperparams_learning_rate_reads_and_sets_without_recompiling():
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    @max_traces   # the optimizer's compiled step traces it once: a new rate must not retrace
    def update(updates, state, params=None):
        return inner.update(updates, state, params)

    opt = Optimizer.from_transform(optax.GradientTransformation(inner.init, update))
    variables = make_variables(initial_values())
    seq = grads_seq(2)
    run_facade(opt, variables, seq[:1])
    assert float(opt.learning_rate) == pytest.approx(0.1)

    opt.learning_rate = 0.02
    assert float(opt.learning_rate) == pytest.approx(0.02)
    before = {v.name: np.array(v.value) for v in variables}
    run_facade(opt, variables, seq[1:])
    for v in variables:
        np.testing.assert_allclose(np.asarray(v.value) - before[v.name], -0.02 * seq[1][v.name],
                                   rtol=1e-5, atol=1e-7)
    assert int(opt.iterations) == 2
    with pytest.raises(TypeError, match="schedule"):
        opt.learning_rate = kopt.schedules.ExponentialDecay(0.1, 10, 0.5)
    with pytest.raises(ValueError, match="learning_rate=-1"):
        opt.learning_rate = -1
    assert float(opt.learning_rate) == pytest.approx(0.02)


def test_from_transform_of_a_kopt_transform_equals_the_stateful_class():
    seq = grads_seq(3)
    wrapped = Optimizer.from_transform(kf.adam(0.05))
    native = kopt.optimizers.Adam(0.05)
    wrapped_vars, native_vars = make_variables(initial_values()), make_variables(initial_values())
    run_facade(wrapped, wrapped_vars, seq[:2])
    run_facade(native, native_vars, seq[:2])
    assert float(wrapped.learning_rate) == pytest.approx(0.05)
    wrapped.learning_rate = native.learning_rate = 0.01
    run_facade(wrapped, wrapped_vars, seq[2:])
    run_facade(native, native_vars, seq[2:])
    for a, b in zip(wrapped_vars, native_vars):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert int(wrapped.iterations) == int(native.iterations) == 3
    assert float(kf.current_learning_rate(wrapped.state)) == pytest.approx(0.01)


def test_weights_round_trip_resumes_bit_for_bit_and_bad_lists_change_nothing():
    seq = grads_seq(4)
    first = Optimizer.from_transform(optax.adam(0.05))
    first_vars = make_variables(initial_values())
    run_facade(first, first_vars, seq[:2])
    saved_weights = first.get_weights()
    saved_values = {v.name: np.array(v.value) for v in first_vars}
    run_facade(first, first_vars, seq[2:])   # the uninterrupted run

    resumed = Optimizer.from_transform(optax.adam(0.05))
    resumed_vars = make_variables(saved_values)
    resumed.build(resumed_vars)
    fresh = resumed.get_weights()
    with pytest.raises(ValueError, match=rf"expected a list of {len(fresh)} arrays"):
        resumed.set_weights(saved_weights[:-1])
    with pytest.raises(ValueError, match=r"entry 2 \(state leaf 1\) has shape \(2,\), expected \(3,\)"):
        resumed.set_weights(saved_weights[:2] + [np.zeros(2)] + saved_weights[3:])
    with pytest.raises(ValueError, match="entry 0 must be the iteration count"):
        resumed.set_weights([np.zeros(3)] + saved_weights[1:])
    for a, b in zip(resumed.get_weights(), fresh):
        np.testing.assert_array_equal(a, b)

    # Entry 0 sets the iteration count, the inner state's own count included.
    resumed.set_weights([np.asarray(9)] + saved_weights[1:])
    assert int(resumed.iterations) == 9 and int(kf.iteration_count(resumed.state.inner)) == 9
    resumed.set_weights(saved_weights)
    assert int(resumed.iterations) == 2 and int(kf.iteration_count(resumed.state.inner)) == 2
    run_facade(resumed, resumed_vars, seq[2:])
    for a, b in zip(resumed_vars, first_vars):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    for a, b in zip(resumed.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# kopt transforms inside optax's combinators, optax transforms inside kopt's chain


def test_optax_multisteps_over_kopt_adam_matches_kopt_gradient_accumulation():
    seq = grads_seq(4)
    accumulated = Optimizer.from_transform(
        optax.MultiSteps(kf.adam(0.05), every_k_schedule=2))
    native = kopt.optimizers.Adam(0.05, gradient_accumulation_steps=2)
    acc_vars, native_vars = make_variables(initial_values()), make_variables(initial_values())
    run_facade(accumulated, acc_vars, seq)
    run_facade(native, native_vars, seq)
    for a, b in zip(acc_vars, native_vars):
        np.testing.assert_allclose(np.asarray(a.value), np.asarray(b.value), rtol=1e-6, atol=1e-6)
    # The count is the inner kopt state's: real updates, not calls (as Keras's iterations).
    assert int(accumulated.iterations) == int(native.iterations) == 2


def test_kopt_transforms_in_optax_multi_transform_and_optax_in_kopt_chain():
    seq = grads_seq(3)
    params = initial_values()
    split = optax.multi_transform(
        {"adam": kf.adam(0.05), "sgd": kf.sgd(0.1, momentum=0.9)},
        {"kernel": "adam", "bias": "sgd"},
    )
    together, _ = run_functional(split, params, seq)
    alone_kernel, _ = run_functional(kf.adam(0.05), {"kernel": params["kernel"]},
                                     [{"kernel": g["kernel"]} for g in seq])
    alone_bias, _ = run_functional(kf.sgd(0.1, momentum=0.9), {"bias": params["bias"]},
                                   [{"bias": g["bias"]} for g in seq])
    np.testing.assert_array_equal(together["kernel"], alone_kernel["kernel"])
    np.testing.assert_array_equal(together["bias"], alone_bias["bias"])

    # kopt's chain hands `params` on to optax's transforms: L2 added to the gradient.
    coupled, _ = run_functional(kf.chain(optax.add_decayed_weights(0.5), kf.sgd(0.1)), params,
                                seq[:1])
    for k in SHAPES:
        expected = params[k] - 0.1 * (seq[0][k] + 0.5 * params[k])
        np.testing.assert_allclose(coupled[k], expected, rtol=1e-6, atol=1e-7)


def test_transform_optimizer_errors():
    with pytest.raises(TypeError, match="init.*update.*Received: 0.5"):
        Optimizer.from_transform(0.5)
    opt = Optimizer.from_transform(optax.adam(0.1))
    with pytest.raises(ValueError, match="build it first"):
        _ = opt.learning_rate
    with pytest.raises(NotImplementedError, match="optax.masked"):
        opt.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(NotImplementedError, match="no config"):
        opt.get_config()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(opt)
    with pytest.raises(ValueError, match="needs a built optimizer"):
        opt.set_weights([np.asarray(0)])
