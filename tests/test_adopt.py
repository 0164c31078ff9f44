"""ADOPT (issue #16's worked example): against its float64 reference, optax, and int8 state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from tests.references_beyond import adopt as reference

SHAPES = [(4, 3), (5,), ()]


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grads(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


def _run(tx, params, grads_seq):
    params = [jnp.asarray(p) for p in params]
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for g in grads_seq:
        updates, state = step([jnp.asarray(x) for x in g], state, params)
        params = kopt.functional.apply_updates(params, updates)
        out.append([np.asarray(p, np.float64) for p in params])
    return out


@pytest.mark.parametrize("options", [
    {},
    dict(weight_decay=0.05, global_clipnorm=1.0),
    dict(use_ema=True, ema_overwrite_frequency=3, gradient_accumulation_steps=2),
    dict(bucket_threshold=64, beta_2=0.5),
    dict(use_clipping=False),
])
def test_matches_the_float64_reference(options):
    """20 steps; the division by sqrt(v) amplifies float32 rounding where v is small,
    hence 1e-5 (a wrong formula is off by 1e-2 or more)."""
    params, grads = _params(), _grads(20)
    actual = _run(kopt.functional.adopt(learning_rate=0.05, **options), params, grads)
    options.pop("bucket_threshold", None)   # storage only: the maths is the same
    expected = reference(params, grads, learning_rate=0.05, **options)
    for a_step, e_step in zip(actual, expected, strict=True):
        for a, e in zip(a_step, e_step, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_clipping", [False, True])
def test_matches_optax(use_clipping):
    optax = pytest.importorskip("optax")
    params, grads = _params(), _grads(20)
    ours = _run(kopt.functional.adopt(learning_rate=0.01, use_clipping=use_clipping),
                params, grads)
    with jax.numpy_dtype_promotion("standard"):   # optax's adopt mixes weak and strong types
        theirs = _run(optax.contrib.adopt(0.01, b1=0.9, b2=0.9999, eps=1e-6,
                                          use_clipping=use_clipping), params, grads)
    for a_step, e_step in zip(ours, theirs):
        for a, e in zip(a_step, e_step):
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def test_int8_keeps_the_momentum_full_precision():
    """The rule refuses int8 for `m` (it stays float32) and quantises `v`."""
    params = [np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)]
    tx = kopt.functional.adopt(learning_rate=0.01, state_dtype="int8")
    state = tx.init([jnp.asarray(p) for p in params])
    assert state.m.leaf(0).dtype == jnp.float32
    assert isinstance(state.v.leaf(0), kopt.functional.quantize.Quantized)
    grads = [[np.random.default_rng(k).standard_normal((64, 64)).astype(np.float32) + 5]
             for k in range(6)]
    low = _run(tx, params, grads)[-1][0]
    full = _run(kopt.functional.adopt(learning_rate=0.01), params, grads)[-1][0]
    np.testing.assert_allclose(low, full, atol=2e-3)


def test_stateful_equals_functional():
    params, grads = _params(), _grads(6)
    variables = [kopt.Variable(p, name=f"w{i}") for i, p in enumerate(params)]
    opt = kopt.optimizers.ADOPT(learning_rate=0.05)
    for g in grads:
        opt.apply_gradients(zip(g, variables))
    expected = _run(kopt.functional.adopt(learning_rate=0.05), params, grads)[-1]
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(np.asarray(v), e, rtol=1e-6, atol=1e-7)
    assert kopt.optimizers.get("adopt").get_config()["beta_2"] == 0.9999
    assert [v.name for v in opt.variables[2:4]] == ["w0_momentum", "w0_velocity"]
