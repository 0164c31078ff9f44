"""Rules declare which low-precision state dtypes each slot supports (issue #16, item 3):
an unsupported 'int8' keeps the slot in float32, an unsupported 'bfloat16' is refused."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.quantize import Quantized

F = kopt.functional


def _run(state_dtype, steps=6, offset=10.0):
    """Adan on one 64x64 leaf; gradients with a large common part, so that the gradient
    differences (Adan's `v`) are small next to the gradients."""
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)}
    rng = np.random.default_rng(1)
    tx = F.adan(1e-2, state_dtype=state_dtype, bucket_threshold=0)
    state, p = tx.init(params), params
    update = jax.jit(tx.update)
    for _ in range(steps):
        g = {"w": jnp.asarray(rng.normal(size=(64, 64)) + offset, jnp.float32)}
        u, state = update(g, state, p)
        p = F.apply_updates(p, u)
    return p, state


def test_adan_int8_keeps_prev_grad_in_float32():
    _, state = _run("int8", steps=1)
    assert isinstance(state.m.leaf(0), Quantized)      # the moments are quantised
    prev = state.prev_grad.leaf(0)
    assert not isinstance(prev, Quantized)
    assert prev.dtype == jnp.float32 and prev.shape == (64, 64)


def test_adan_int8_gradient_difference_tracks_float32():
    """With 8-bit `prev_grad` the difference EMA `v` was 22% off after 6 steps; with a
    float32 `prev_grad` only `v`'s own 8-bit codes remain (about 3%)."""
    _, s32 = _run(None)
    _, s8 = _run("int8")
    v32 = s32.v.to_leaves()[0]
    v8 = s8.v.leaf(0).dequantize()
    rel = float(jnp.linalg.norm(v8 - v32) / jnp.linalg.norm(v32))
    assert rel < 0.06, rel
    np.testing.assert_array_equal(   # the previous gradient is kept exactly
        s8.prev_grad.leaf(0), s32.prev_grad.to_leaves()[0])


class _State(NamedTuple):
    count: jax.Array
    learning_rate: jax.Array
    m: Packed
    seed: jax.Array | None = None
    ema: Packed | None = None
    accum: Packed | None = None
    micro_step: jax.Array | None = None


def test_unsupported_bfloat16_is_refused_naming_the_slot():
    rule = Rule(slots=("m",), step=lambda g, s, lr, t: (-lr * g, {"m": g}),
                state_dtypes={"m": ("int8",)})
    with pytest.raises(ValueError, match=r"\['m'\] cannot be stored in bfloat16.*"
                                         r"Received: state_dtype='bfloat16'"):
        elementwise_transform(rule, _State, 0.1, state_dtype="bfloat16")
    elementwise_transform(rule, _State, 0.1, state_dtype="int8")   # supported


def test_rule_supports():
    rule = Rule(slots=("a", "b"), step=None, state_dtypes={"b": ()})
    assert rule.supports("a", "int8") and rule.supports("a", "bfloat16")
    assert not rule.supports("b", "int8") and not rule.supports("b", "bfloat16")
    assert rule.supports("b", None) and rule.supports("b", "float32")
