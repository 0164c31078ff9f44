"""orbax checkpoints of every functional state, as a matrix (issue 14, item 1).

For each optimizer of `tests/catalogue.py` (with every optional slot: its
`make_every_slot`), and for each variant that applies to it (defaults, which bucket every
leaf of this small tree; bucketing off; a bucket beside a leaf of its own; `use_ema`;
gradient accumulation stopped in the
middle of a cycle; a learning-rate schedule; bfloat16 and int8 state), the state after
two jitted steps is saved with `orbax.checkpoint.StandardCheckpointer` as
`{"optimizer": state}`, restored into an abstract target made by
`jax.eval_shape(tx.init, params)` (what a fresh process has), and three more steps from
the restored state give the same params and state, bit for bit, as the uninterrupted run.

One checkpoint per optimizer holds all its variants, to keep the file fast.
"""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest

import kopt
import kopt.functional as kf
from tests.catalogue import BY_NAME, NAMES

ocp = pytest.importorskip("orbax.checkpoint")

# name -> (keyword arguments, needs state_dtype support)
VARIANTS = {
    "defaults": ({}, False),   # every leaf in the bucket
    "no_buckets": ({"bucket_threshold": 0}, False),
    "buckets": ({"bucket_threshold": 4}, False),   # the vector and the scalar share a bucket
    "ema": ({"use_ema": True, "ema_overwrite_frequency": 3}, False),
    "accumulation": ({"gradient_accumulation_steps": 3}, False),   # stopped after 2 of 3
    "schedule": ({"learning_rate": "schedule"}, False),
    "bf16": ({"state_dtype": "bfloat16", "bucket_threshold": 4}, True),
    # the matrix quantised, the vector and the scalar in a float32 bucket
    "int8": ({"state_dtype": "int8", "min_quantized_size": 8, "bucket_threshold": 4}, True),
}

PARAMS = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
          "b": np.array([0.1, -0.2, 0.3, 0.0], np.float32),
          "s": np.array(0.5, np.float32)}


def _grads(steps):
    rng = np.random.default_rng(7)
    return [{k: rng.standard_normal(np.shape(v)).astype(np.float32) for k, v in PARAMS.items()}
            for _ in range(steps)]


def _transform(name, variant):
    kwargs, needs_state_dtype = VARIANTS[variant]
    entry = BY_NAME[name]
    if needs_state_dtype and "state_dtype" not in inspect.signature(entry.factory).parameters:
        return None
    kwargs = dict(kwargs)
    if kwargs.get("learning_rate") == "schedule":
        kwargs["learning_rate"] = kopt.schedules.ExponentialDecay(0.05, 2, 0.5)
    try:
        return entry.make_every_slot(**kwargs)
    except ValueError:   # int8 state on a rule that works on whole tensors
        assert variant == "int8"
        return None


def _step_fn(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state
    return step


def _assert_bitwise(a, b, what):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_orbax_save_restore_continues_bit_for_bit(name, tmp_path):
    grads = _grads(5)
    # Committed to one device, like what orbax restores, so both runs share one compiled step.
    device = jax.devices()[0]
    params0 = jax.device_put(PARAMS, device)
    cases, saved = {}, {}
    for variant in VARIANTS:
        tx = _transform(name, variant)
        if tx is None:
            continue
        step = _step_fn(tx)
        params, state = params0, jax.device_put(tx.init(params0), device)
        for g in grads[:2]:
            params, state = step(params, state, g)
        saved[variant] = {"optimizer": state, "params": params}
        for g in grads[2:]:   # the uninterrupted run
            params, state = step(params, state, g)
        cases[variant] = (tx, step, params, state)
    assert {"defaults", "no_buckets", "buckets", "ema", "accumulation", "schedule"} <= set(cases)

    checkpointer = ocp.StandardCheckpointer()
    path = tmp_path / "ckpt"
    checkpointer.save(path, saved)
    checkpointer.wait_until_finished()
    # A fresh process knows the transforms and the params' shapes, not the state.
    abstract_params = jax.eval_shape(lambda: params0)
    target = {v: {"optimizer": jax.eval_shape(tx.init, abstract_params), "params": abstract_params}
              for v, (tx, *_rest) in cases.items()}
    restored = checkpointer.restore(path, target)
    checkpointer.close()

    for variant, (_tx, step, expected_params, expected_state) in cases.items():
        what = f"{name}/{variant}"
        _assert_bitwise(restored[variant], saved[variant], what + " (restored)")
        params, state = restored[variant]["params"], restored[variant]["optimizer"]
        for g in grads[2:]:
            params, state = step(params, state, g)
        assert step._cache_size() == 1, what   # the restored state is the same pytree type
        _assert_bitwise(params, expected_params, what + " (params)")
        _assert_bitwise(state, expected_state, what + " (state)")
