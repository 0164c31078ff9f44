"""Bucketing is on by default on every backend, and its compiled step does not grow one
distinct kernel per leaf (issue 17).

XLA compiles each distinct fused computation separately (on CPU through LLVM, tens of ms
each) and shares one kernel between identical ones. These tests count the distinct fused
computations of a compiled step, names and metadata aside: with each leaf's slice of a
bucket at a runtime offset, that count is the same for 40 leaves as for 160."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt.functional as F
from kopt.functional.buckets import AUTO_BUCKET_SIZE, Packed, plan, resolve_threshold

_COMPUTATION = re.compile(r"^(%?fused_computation[\w.\-]*) \(.*?^}", re.S | re.M)


def _tree(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layer{i:04d}": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
            for i in range(n)}


def _distinct_fusions(tx, n):
    params, grads = _tree(n, 0), _tree(n, 1)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return F.apply_updates(p, u), s

    text = jax.jit(step).lower(params, tx.init(params), grads).compile().as_text()
    bodies = set()
    for m in _COMPUTATION.finditer(text):
        body = m.group(0).split("{", 1)[1]
        body = re.sub(r", metadata=\{[^}]*\}", "", body)
        body = re.sub(r"%[\w.\-]+", "%v", body)
        bodies.add(body)
    assert bodies, "no fused computation found in the compiled step"
    return len(bodies)


def test_bucketing_is_on_by_default_on_every_backend():
    assert resolve_threshold(None) == AUTO_BUCKET_SIZE
    assert resolve_threshold(0) == 0
    params = _tree(3)
    layout = plan(params)
    assert [k for k, _, _ in layout.place] == [0, 0, 0]   # all three in the bucket
    state = F.adam(1e-3).init(params)
    packed = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, Packed))
              if isinstance(x, Packed)]
    assert packed and all(p.bucket is not None and p.bucket.shape == (3 * 32,) for p in packed)
    off = [x for x in jax.tree.leaves(F.adam(1e-3, bucket_threshold=0).init(params),
                                      is_leaf=lambda x: isinstance(x, Packed))
           if isinstance(x, Packed)]
    assert off and all(p.bucket is None for p in off)


@pytest.mark.parametrize("make", [
    lambda: F.adam(1e-3, bucket_threshold=AUTO_BUCKET_SIZE),
    lambda: F.sgd(0.01, momentum=0.9, bucket_threshold=AUTO_BUCKET_SIZE)], ids=["adam", "sgdm"])
def test_compiled_step_kernels_do_not_grow_with_leaves(make):
    small, large = _distinct_fusions(make(), 40), _distinct_fusions(make(), 160)
    assert large == small, (small, large)
    assert large < 40


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", ["adam", "sgdm"])
def test_bucketed_step_equals_per_leaf_step(name, jit):
    """Mixed shapes (a large leaf of its own, a skipped leaf), three steps."""
    rng = np.random.default_rng(5)
    shapes = {"a": (3, 5), "b": (7,), "big": (300,), "c": (2, 2, 2), "d": ()}
    params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    make = {"adam": lambda t: F.adam(1e-2, bucket_threshold=t),
            "sgdm": lambda t: F.sgd(0.1, momentum=0.9, bucket_threshold=t)}[name]
    results = []
    for threshold in (256, 0):
        tx = make(threshold)
        update = jax.jit(tx.update) if jit else tx.update
        p, s = params, tx.init(params)
        for k in range(3):
            g = {n: jnp.asarray(np.random.default_rng(k).standard_normal(shapes[n]), jnp.float32)
                 for n in shapes}
            if k == 1:
                g["b"] = None   # a skipped leaf keeps its state
            u, s = update(g, s, p)
            p = F.apply_updates(p, u)
        results.append(p)
    bucketed, per_leaf = results
    for n in shapes:
        np.testing.assert_allclose(bucketed[n], per_leaf[n], rtol=1e-6, atol=1e-7, err_msg=n)
