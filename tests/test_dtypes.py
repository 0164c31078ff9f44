"""Dtypes (issue #8 section 5), for every registered optimizer and the non-finite guards.

- bf16 and f16 params keep their dtype, and so do the updates; per-parameter state is
  float32 for 16-bit params and takes the param's dtype otherwise;
- mixed-dtype trees (bf16, f16, f32 and scalars together) work;
- under `jax_enable_x64`, f64 params keep f64 state and the step is computed in float64
  (checked against a float64 NumPy reference), next to f32 and bf16 params that stay so.

The dtype checks over the whole registry trace with `jax.eval_shape` (no compilation);
a few stateful runs execute for real.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.functional.nonfinite import dynamic_loss_scale, skip_nonfinite
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from tests.catalogue import CATALOGUE

F32 = jnp.dtype(jnp.float32)

# Each param has a shape of its own, so a state leaf of that shape belongs to it.
MIXED_X32 = {"bf16": ((2, 7), jnp.bfloat16), "f16": ((3,), jnp.float16),
             "f32": ((5,), jnp.float32), "scalar": ((), jnp.bfloat16)}
MIXED_X64 = {"f64": ((4, 3), jnp.float64), "f32": ((5,), jnp.float32),
             "bf16": ((2, 7), jnp.bfloat16)}


def _transforms():
    """name -> factory of a functional transform (bucketing off, so state leaves keep
    their param's shape)."""
    out = {}
    for name, cls in sorted((e.name, e.cls) for e in CATALOGUE):
        # The cross-cutting state (EMA, accumulator) too; the core step runs in lax.cond.
        out[name] = lambda cls=cls: cls(
            bucket_threshold=0, use_ema=True, gradient_accumulation_steps=2).transform
    adam = lambda: kopt.functional.adam(bucket_threshold=0)
    out["skip_nonfinite(adam)"] = lambda: skip_nonfinite(adam())
    out["dynamic_loss_scale(adam)"] = lambda: dynamic_loss_scale(adam())
    return out


TRANSFORMS = _transforms()


def _spec(tree):
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in tree.items()}


def _signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)]


def _expected_slot_dtype(dtype):
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else F32


@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_dtypes_of_params_updates_and_state(name, x64):
    with jax.enable_x64(x64):
        tree = MIXED_X64 if x64 else MIXED_X32
        tx = TRANSFORMS[name]()
        params = _spec(tree)
        state = jax.eval_shape(tx.init, params)

        def step(grads, state, params):
            updates, state = tx.update(grads, state, params)
            return updates, state, kopt.functional.apply_updates(params, updates)

        updates, new_state, new_params = jax.eval_shape(step, params, state, params)
        for key, (_, dtype) in tree.items():
            assert updates[key].dtype == dtype, key
            assert new_params[key].dtype == dtype, key
        assert _signature(new_state) == _signature(state)   # stable, weak types included
        assert jax.eval_shape(kopt.functional.iteration_count, state).dtype == jnp.int32

        by_shape = {shape: dtype for shape, dtype in tree.values() if shape != ()}
        seen = set()
        for leaf in jax.tree.leaves(state):
            if leaf.shape in by_shape:
                assert leaf.dtype == _expected_slot_dtype(by_shape[leaf.shape]), (leaf, name)
                seen.add(leaf.shape)
            elif jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.shape != ():
                # Factored state (rows/columns) or anything else: 32 or 64 bits, never 16.
                assert leaf.dtype.itemsize >= 4, (leaf, name)
        assert seen, f"{name}: no per-parameter state found"


# --------------------------------------------------------------------------- real runs


def _adam_reference(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Keras's Adam in float64 NumPy."""
    p = np.array(params, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads_seq, start=1):
        g = np.asarray(g, np.float64)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        p -= lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return p


def test_float64_is_computed_in_float64_under_x64():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) * 1e-3 for _ in range(4)]
    with jax.enable_x64(True):
        w64 = kopt.Variable(jnp.asarray(p0, jnp.float64), name="w64")
        w32 = kopt.Variable(jnp.asarray(p0, jnp.float32), name="w32")
        opt = kopt.optimizers.Adam(learning_rate=0.01)
        for g in grads:
            opt.apply_gradients([(jnp.asarray(g, jnp.float64), w64),
                                 (jnp.asarray(g, jnp.float32), w32)])
        assert w64.dtype == jnp.float64 and w32.dtype == jnp.float32
        weights = opt.get_weights()   # [it, m64, m32, v64, v32]
        assert [w.dtype for w in weights[1:]] == [np.float64, np.float32] * 2
        # The learning rate is held as float32 (as Keras's `floatx` variable) and cast.
        expected = _adam_reference(p0, grads, float(np.float32(0.01)))
        np.testing.assert_allclose(w64.numpy(), expected, rtol=1e-13, atol=1e-15)
        # The float32 twin is float32-accurate only: the f64 path really is wider.
        np.testing.assert_allclose(w32.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert np.abs(w32.numpy() - expected).max() > 1e-9


def test_stateful_mixed_16bit_variables():
    """bf16, f16 and f32 Variables in one bucketed Adam behind the loss-scale wrapper: the
    Variables keep their dtypes and move like a float32 run rounded to their dtype; the
    state (one shared float32 bucket) is float32."""
    rng = np.random.default_rng(1)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in MIXED_X32.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in MIXED_X32.items()}
             for _ in range(3)]

    def run(dtypes, wrap):
        variables = [kopt.Variable(jnp.asarray(init[k], dtypes[k]), name=k) for k in MIXED_X32]
        inner = kopt.optimizers.Adam(learning_rate=0.01, bucket_threshold=1 << 16)
        opt = LossScaleOptimizer(inner, initial_scale=1.0) if wrap else inner
        for g in grads:
            opt.apply_gradients((jnp.asarray(g[k], dtypes[k]), v)
                                for k, v in zip(MIXED_X32, variables))
        return opt, variables

    opt, variables = run({k: d for k, (_, d) in MIXED_X32.items()}, wrap=True)
    _, reference = run({k: jnp.float32 for k in MIXED_X32}, wrap=False)
    for v, ref, (_, dtype) in zip(variables, reference, MIXED_X32.values()):
        assert v.dtype == dtype
        tol = 1e-6 if dtype == jnp.float32 else 2e-2
        np.testing.assert_allclose(v.numpy().astype(np.float32), ref.numpy(), rtol=tol, atol=tol)
    assert {leaf.dtype for leaf in jax.tree.leaves(opt.state)} == {jnp.dtype(jnp.int32), F32}
    assert opt.dynamic_scale.dtype == jnp.float32 and int(opt.iterations) == 3


# --------------------------------------------------------------------------- known gaps



@pytest.mark.parametrize("kwargs", [dict(global_clipnorm=1.0),
                                    dict(use_ema=True, ema_overwrite_frequency=2)],
                         ids=["global_clipnorm", "ema_overwrite"])
def test_16bit_params_with_options_that_widen(kwargs):
    tx = kopt.functional.adam(**kwargs)
    params = _spec(MIXED_X32)
    jax.eval_shape(tx.update, params, jax.eval_shape(tx.init, params), params)


def test_apply_updates_of_float32_updates_to_bfloat16_params():
    params = {"w": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    updates = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    out = jax.eval_shape(kopt.functional.apply_updates, params, updates)
    assert out["w"].dtype == jnp.bfloat16
