"""Conformance tests for every optimizer of kopt.functional, driven by tests/catalogue.py.

Each entry must reduce a quadratic under jit, keep its state's structure and dtypes across
`update`, preserve the gradient dtype (bf16, f32, f64), handle dicts, tuples and `None`
leaves, skip `None` gradients, work under `vmap`, and change its learning rate without a
recompile. The last part checks composition (`chain`, optax interop), the state queries and
the argument errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf
from tests.helpers import assert_trees_close, jit_max_traces

try:
    from tests.catalogue import configurations
except ImportError:  # pragma: no cover
    from catalogue import configurations


def _factory(fn, **defaults):
    return lambda **kw: fn(**{**defaults, **kw})


# (name, factory): factory(**overrides) -> Transform, for every optimizer of the catalogue
# (tests/catalogue.py) and its variants. The learning rates suit the quadratic.
ENTRIES = dict(configurations())
REGISTRY = [(name, _factory(e.factory, **e.hparams)) for name, e in ENTRIES.items()]
NAMES = [name for name, _ in REGISTRY]
FACTORIES = dict(REGISTRY)
LEARNING_RATES = {
    name: float(kf.current_learning_rate(f().init({"w": jnp.zeros(1)}))) for name, f in REGISTRY
}

by_name = pytest.mark.parametrize("name", NAMES)


def small_params(dtype=jnp.float32):
    return {
        "w": jnp.asarray(np.linspace(-1, 1, 6).reshape(3, 2), dtype),
        "b": (jnp.asarray([0.5, -0.25], dtype), jnp.asarray(0.75, dtype)),
    }


def random_like(tree, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x)), x.dtype), tree)


def state_signature(state):
    """Structure, shapes and dtypes of a state: what `lax.cond`/`scan` need to be stable."""
    leaves, treedef = jax.tree.flatten(state)
    return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]


def packed_fields(state):
    return {f: getattr(state, f) for f in state._fields if isinstance(getattr(state, f), kf.Packed)}


# --------------------------------------------------------------------------------------
# Per-optimizer conformance.

f32 = lambda x: jnp.asarray(x, jnp.float32)  # explicit dtype: never weakly typed
TARGET = {"w": f32([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.0]]), "b": (f32([2.0, -1.0]), f32(1.5))}
CURVATURE = {"w": f32([[1.0, 0.5], [2.0, 1.0], [0.7, 1.5]]), "b": (f32([1.0, 0.8]), f32(1.2))}


def quadratic(params):
    terms = jax.tree.map(lambda p, t, c: jnp.sum(c * jnp.square(p - t)), params, TARGET, CURVATURE)
    return 0.5 * sum(jax.tree.leaves(terms))


@by_name
def test_reduces_a_quadratic_under_jit_without_recompiling(name):
    """100 jitted steps cut the loss by far; changing the learning rate midway compiles nothing."""
    tx = FACTORIES[name]()
    @jit_max_traces   # a second trace (a new learning rate, a second step) raises
    def step(params, state):
        loss, grads = jax.value_and_grad(quadratic)(params)
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state, loss

    params = jax.tree.map(lambda t: jnp.full_like(t, ENTRIES[name].quadratic_start), TARGET)
    state = tx.init(params)
    # The jitted step computes what the eager one does.
    eager_updates, _ = tx.update(jax.grad(quadratic)(params), state, params)
    jit_params, _, _ = step(params, state)
    assert_trees_close(jit_params, kf.apply_updates(params, eager_updates))

    initial = float(quadratic(params))
    for i in range(100):
        if i == 50:
            state = kf.set_learning_rate(state, 0.5 * LEARNING_RATES[name])
        params, state, _ = step(params, state)
    assert float(quadratic(params)) < ENTRIES[name].quadratic_fraction * initial
    assert int(kf.iteration_count(state)) == 100


BUCKETS = pytest.mark.parametrize(
    "buckets", [{"bucket_threshold": 1 << 16}, {"bucket_threshold": 0}], ids=["buckets", "no-buckets"]
)


@by_name
@BUCKETS
def test_state_structure_and_dtypes_are_stable(name, buckets):
    tx = FACTORIES[name](**buckets)
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((3,), jnp.bfloat16), "s": jnp.ones(())}
    grads = random_like(params)
    state = tx.init(params)
    _, new_state = tx.update(grads, state, params)
    assert state_signature(new_state) == state_signature(state)
    # lax.cond requires both branches to have the same types: it fails to trace otherwise.
    # (eval_shape traces it without spending a compilation.)
    out = jax.eval_shape(
        lambda s: jax.lax.cond(True, lambda s: tx.update(grads, s, params)[1], lambda s: s, s), state
    )
    assert state_signature(out) == state_signature(state)


@by_name
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_preserves_the_gradient_dtype(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        dtype = jnp.dtype(dtype)
        tx = FACTORIES[name]()
        params = small_params(dtype)
        grads = random_like(params)
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))
        assert all(p.dtype == dtype for p in jax.tree.leaves(kf.apply_updates(params, updates)))
        # Moments take the param's dtype, with a float32 minimum for 16-bit params. (With
        # float64 params the bucket, float32, holds no moment: it keeps its one unused
        # element, so the state's structure does not depend on the params' dtypes.)
        slot_dtype = jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype
        for slot in packed_fields(state).values():
            assert all(x.dtype == slot_dtype for x in slot.to_leaves())
            members = slot.layout.members()
            assert all(x.dtype == slot_dtype for x in jax.tree.leaves(slot)) or not members


@by_name
def test_handles_dicts_tuples_and_none_leaves(name):
    tx = FACTORIES[name]()
    params = (jnp.ones(3), {"k": (jnp.ones((2, 2)), None), "none": None, "s": jnp.ones(())}, None)
    grads = (jnp.full(3, 0.5), {"k": (jnp.full((2, 2), -0.5), None), "none": None, "s": jnp.ones(())}, None)
    state = tx.init(params)
    for _ in range(1 + ENTRIES[name].silent_steps):
        updates, state = tx.update(grads, state, params)
    new_params = kf.apply_updates(params, updates)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert updates[1]["k"][1] is None and updates[1]["none"] is None and updates[2] is None
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
        assert not np.allclose(p, q)


@by_name
@BUCKETS
def test_none_gradient_leaves_its_param_and_state_unchanged(name, buckets):
    tx = FACTORIES[name](**buckets)
    params = {"a": jnp.asarray([1.0, -2.0, 3.0]), "b": jnp.ones((2, 2)), "c": jnp.asarray(0.5)}
    grads = random_like(params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)  # make the state non-trivial
    params = kf.apply_updates(params, updates)

    fresh = random_like(params, seed=1)   # a fixed point after one step would not move
    skip = {"a": None, "b": fresh["b"], "c": fresh["c"]}
    updates, new_state = tx.update(skip, state, params)
    assert updates["a"] is None
    new_params = kf.apply_updates(params, updates)
    np.testing.assert_array_equal(new_params["a"], params["a"])
    assert not np.allclose(new_params["b"], params["b"])
    assert int(kf.iteration_count(new_state)) == 2
    # Leaves flatten in key order: "a" is leaf 0, "b" leaf 1.
    for field, slot in packed_fields(state).items():
        new_slot = getattr(new_state, field)
        np.testing.assert_array_equal(new_slot.leaf(0), slot.leaf(0), err_msg=field)
        if np.size(slot.leaf(1)):   # Muon keeps no AdamW moment for a matrix
            assert not np.array_equal(new_slot.leaf(1), slot.leaf(1)), field


@by_name
def test_works_under_vmap(name):
    tx = FACTORIES[name]()
    batch = 3
    params = {
        "w": jnp.asarray(np.random.default_rng(0).normal(size=(batch, 3, 2)), jnp.float32),
        "b": jnp.zeros((batch, 2)),
    }
    grad_steps = [random_like(params, seed) for seed in (1, 2)]

    state = jax.vmap(tx.init)(params)
    p = params
    for g in grad_steps:
        updates, state = jax.vmap(tx.update)(g, state, p)
        p = kf.apply_updates(p, updates)

    for i in range(batch):
        take = lambda tree, i=i: jax.tree.map(lambda x: x[i], tree)
        p_i = take(params)
        s_i = tx.init(p_i)
        for g in grad_steps:
            u_i, s_i = tx.update(take(g), s_i, p_i)
            p_i = kf.apply_updates(p_i, u_i)
        assert_trees_close(take(p), p_i)


@by_name
def test_iteration_count_and_learning_rate_queries(name):
    tx = FACTORIES[name]()
    params = small_params()
    state = tx.init(params)
    assert int(kf.iteration_count(state)) == 0
    assert float(kf.current_learning_rate(state)) == pytest.approx(LEARNING_RATES[name])
    for seed in range(3):
        _, state = tx.update(random_like(params, seed), state, params)
    assert int(kf.iteration_count(state)) == 3
    assert kf.iteration_count(state).dtype == jnp.int32


@by_name
def test_set_learning_rate_scales_the_first_update(name):
    """Every rule is linear in the learning rate at the first step (weight decay included)."""
    tx = FACTORIES[name]()
    params = small_params()
    grads = random_like(params)
    state = tx.init(params)
    base, _ = tx.update(grads, state, params)
    faster = kf.set_learning_rate(state, 3 * LEARNING_RATES[name])
    assert float(kf.current_learning_rate(faster)) == pytest.approx(3 * LEARNING_RATES[name])
    assert state_signature(faster) == state_signature(state)
    scaled, _ = tx.update(grads, faster, params)
    if ENTRIES[name].linear_in_learning_rate:
        assert_trees_close(scaled, jax.tree.map(lambda u: 3 * u, base), rtol=1e-5)
    else:   # the new rate still reaches the step (tests/catalogue.py says why it is not linear)
        for u, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(base)):
            assert not np.allclose(u, b)


@by_name
def test_weight_decay_without_params_is_a_clear_error(name):
    tx = FACTORIES[name](weight_decay=0.01)
    params = small_params()
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(random_like(params), state)
    with pytest.raises(ValueError, match="params"):
        tx.update(random_like(params), state, None)


@by_name
def test_negative_learning_rate_is_rejected(name):
    with pytest.raises(ValueError, match=r"learning_rate.*-1\.0|learning_rate=-1"):
        FACTORIES[name](learning_rate=-1.0)


@by_name
@pytest.mark.parametrize(
    "clips",
    [
        {"clipnorm": 1.0, "clipvalue": 0.5},
        {"clipnorm": 1.0, "global_clipnorm": 2.0},
        {"clipvalue": 0.5, "global_clipnorm": 2.0},
    ],
    ids=["norm+value", "norm+global", "value+global"],
)
def test_two_clip_options_are_rejected(name, clips):
    with pytest.raises(ValueError) as info:
        FACTORIES[name](**clips)
    for key, value in clips.items():
        assert f"{key}={value}" in str(info.value)


@by_name
@pytest.mark.parametrize("threshold", [-1, 1.5, True, "8"])
def test_bad_bucket_threshold_is_rejected(name, threshold):
    with pytest.raises(ValueError) as info:
        FACTORIES[name](bucket_threshold=threshold)
    assert f"bucket_threshold={threshold!r}" in str(info.value)


@pytest.mark.parametrize("fn", [kf.sgd, kf.rmsprop])
@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_outside_unit_interval_is_rejected(fn, momentum):
    with pytest.raises(ValueError) as info:
        fn(momentum=momentum)
    assert f"momentum={momentum}" in str(info.value)


@pytest.mark.parametrize("fn", [kf.adam, kf.adamw])
@pytest.mark.parametrize("arg", ["beta_1", "beta_2"])
def test_beta_outside_unit_interval_is_rejected(fn, arg):
    with pytest.raises(ValueError) as info:
        fn(**{arg: 1.5})
    assert f"{arg}=1.5" in str(info.value)


def test_set_learning_rate_rejects_bad_values():
    state = kf.sgd(0.1).init(small_params())
    with pytest.raises(ValueError, match="learning_rate=-0.5"):
        kf.set_learning_rate(state, -0.5)
    with pytest.raises(TypeError):
        kf.set_learning_rate(state, lambda step: 0.1)


# --------------------------------------------------------------------------------------
# Schedules and recompiles.


def test_schedule_steps_compile_nothing_new_and_are_reported():
    schedule = kopt.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    tx = kf.adam(schedule)
    @jit_max_traces   # a second trace (a new learning rate, a second step) raises
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    params = small_params()
    state = tx.init(params)
    for k in range(5):
        assert float(kf.current_learning_rate(state)) == pytest.approx(0.1 * 0.5 ** (k / 2))
        params, state = step(params, state, random_like(params, k))
    assert int(kf.iteration_count(state)) == 5


def test_set_learning_rate_in_a_chain_compiles_nothing_new():
    tx = kf.chain(kf.clip_by_global_norm(1.0), kf.sgd(0.1, momentum=0.9))
    @jit_max_traces   # a second trace (a new learning rate, a second step) raises
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    params = small_params()
    state = tx.init(params)
    params, state = step(params, state, random_like(params, 0))
    state = kf.set_learning_rate(state, 0.01)
    assert float(kf.current_learning_rate(state)) == pytest.approx(0.01)
    params, state = step(params, state, random_like(params, 1))
    assert int(kf.iteration_count(state)) == 2


# --------------------------------------------------------------------------------------
# Composition: kopt's chain and optax.


def _trajectory(tx, steps=3):
    params = small_params()
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u_s: (kf.apply_updates(p, u_s[0]), u_s[1]))(tx.update(g, s, p)))
    for k in range(steps):
        params, state = step(params, state, jax.tree.map(lambda x: 5 * x, random_like(params, k)))
    return params, state


def test_chain_of_clip_and_sgd_matches_the_builtin_option():
    chained, state = _trajectory(kf.chain(kf.clip_by_global_norm(1.0), kf.sgd(0.1)))
    builtin, _ = _trajectory(kf.sgd(0.1, global_clipnorm=1.0))
    assert_trees_close(chained, builtin)
    assert int(kf.iteration_count(state)) == 3


def test_kopt_transforms_inside_optax_chain():
    optax = pytest.importorskip("optax")
    chained, state = _trajectory(optax.chain(kf.clip_by_global_norm(1.0), kf.adam(0.1)))
    builtin, _ = _trajectory(kf.adam(0.1, global_clipnorm=1.0))
    assert_trees_close(chained, builtin)
    assert int(kf.iteration_count(state)) == 3
    assert float(kf.current_learning_rate(state)) == pytest.approx(0.1)


def test_optax_transforms_inside_kopt_chain():
    optax = pytest.importorskip("optax")
    # optax's clip divides by the norm where Keras multiplies by clip * min(1/norm, 1/clip):
    # the same scale up to float32 rounding.
    chained, _ = _trajectory(kf.chain(optax.clip_by_global_norm(1.0), kf.sgd(0.1, momentum=0.9)))
    builtin, _ = _trajectory(kf.sgd(0.1, momentum=0.9, global_clipnorm=1.0))
    assert_trees_close(chained, builtin)
    scaled, _ = _trajectory(kf.chain(kf.sgd(0.1), optax.scale(0.5)))
    half, _ = _trajectory(kf.sgd(0.05))
    assert_trees_close(scaled, half)


def test_chain_rejects_non_transforms():
    with pytest.raises(TypeError, match="argument 1"):
        kf.chain(kf.sgd(0.1), 0.5)
