"""Property-based tests (issue #8 section 6) with hypothesis.

Over random small pytrees (dicts, lists and nesting; shapes of rank 0 to 2; float32,
bfloat16 and float16 leaves), optimizers from `tests/catalogue.py`
with random cross-cutting options, sometimes wrapped in dynamic loss scaling with a
non-finite step, one example checks all four properties over three steps:

- jit equals eager (`jax.disable_jit`);
- functional equals stateful (the same maths through Variables and the compiled step);
- `get_weights` -> `set_weights` is an identity on the state;
- the state's structure, shapes, dtypes and weak types are the same after every step.

Each example compiles two steps, so CI runs few examples (see MAX_EXAMPLES).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import kopt
from kopt.functional.nonfinite import dynamic_loss_scale
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from tests.catalogue import BY_NAME
from tests.helpers import jit_max_traces

STEPS = 3
SHAPES = [(), (3,), (2, 3), (4, 1)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
OPTIONS = [
    {},
    {"clipnorm": 1.0},
    {"global_clipnorm": 1.0},
    {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 2},
    {"clipvalue": 0.1, "weight_decay": 0.01},
    {"use_ema": True, "ema_momentum": 0.9},
    {"gradient_accumulation_steps": 2},
    {"loss_scale_factor": 4.0, "bucket_threshold": 1 << 16},
]


def _tree(leaves, layout):
    if layout == "dict":
        return {f"p{i}": leaf for i, leaf in enumerate(leaves)}
    if layout == "list":
        return list(leaves)
    return {"head": leaves[0], "rest": [{"x": leaf} for leaf in leaves[1:]]}   # nested


@st.composite
def examples(draw):
    n = draw(st.integers(1, 3))
    # Shapes from a small menu: eager mode compiles every op once per shape and dtype, so
    # a menu lets examples share those compilations.
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n)]
    dtypes = [draw(st.sampled_from(DTYPES)) for _ in range(n)]
    return dict(
        shapes=shapes, dtypes=dtypes,
        layout=draw(st.sampled_from(["dict", "list", "nested"])),
        name=draw(st.sampled_from(sorted(BY_NAME))),
        options=draw(st.sampled_from(OPTIONS)),
        loss_scale=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _avals(tree):
    return [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)]


def _signature(tree):
    return jax.tree.structure(tree), _avals(tree)


def _close(actual, expected, what, loose):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, what
    tol = 1e-2 if loose else 1e-6
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32),
                               rtol=tol, atol=tol, err_msg=what)


def _assert_trees_close(actual, expected, what, loose):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        _close(a, e, what, loose)


# Each example costs a few seconds of compilation: CI runs a handful, deterministically
# and without shrinking (which would take minutes); the failing example is printed as
# drawn. Set KOPT_PROPERTY_EXAMPLES=100 for a thorough local run.
MAX_EXAMPLES = int(os.environ.get("KOPT_PROPERTY_EXAMPLES", "5"))


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(examples())
def test_optimizer_properties(ex):
    rng = np.random.default_rng(ex["seed"])
    leaves = [rng.standard_normal(s).astype(np.float32) for s in ex["shapes"]]
    params = _tree([jnp.asarray(x, d) for x, d in zip(leaves, ex["dtypes"])], ex["layout"])
    grads_seq = []
    for t in range(STEPS):
        g = [rng.standard_normal(s).astype(np.float32) for s in ex["shapes"]]
        if ex["loss_scale"] and t == 1:
            g[0] = np.full(ex["shapes"][0], np.inf, np.float32)   # skipped, scale halved
        grads_seq.append(_tree([jnp.asarray(x, d) for x, d in zip(g, ex["dtypes"])], ex["layout"]))

    cls = BY_NAME[ex["name"]].cls
    # With 16-bit params, jit may keep an intermediate param wider than eager does (XLA's
    # excess precision), which moves values derived from it by about a 16-bit ulp.
    loose = any(jnp.dtype(d).itemsize < 4 for d in ex["dtypes"])

    def make_stateful():
        opt = cls(**ex["options"])
        return LossScaleOptimizer(opt, initial_scale=2.0, dynamic_growth_steps=2) if ex["loss_scale"] else opt

    tx = cls(**ex["options"]).transform   # the functional transform, built on its own
    if ex["loss_scale"]:
        tx = dynamic_loss_scale(tx, initial_scale=2.0, dynamic_growth_steps=2)

    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return kopt.functional.apply_updates(params, updates), state

    jit_step = jit_max_traces(step)
    opt = make_stateful()
    variables = [kopt.Variable(p, name=f"v{i}") for i, p in enumerate(jax.tree.leaves(params))]

    opt.build(variables)
    stateful_signature = _signature(opt.state)
    p_jit = p_eager = params
    s_jit = s_eager = tx.init(params)
    signature = _signature(s_jit)
    for t, grads in enumerate(grads_seq):
        p_jit, s_jit = jit_step(grads, s_jit, p_jit)
        with jax.disable_jit():
            p_eager, s_eager = step(grads, s_eager, p_eager)
        _assert_trees_close(p_eager, p_jit, f"params, step {t}: eager vs jit", loose)
        _assert_trees_close(s_eager, s_jit, f"state, step {t}: eager vs jit", loose)
        assert _signature(s_jit) == signature, f"state signature changed at step {t}"

        opt.apply_gradients(zip(jax.tree.leaves(grads), variables))
        for v, p in zip(variables, jax.tree.leaves(p_jit)):
            _close(v.value, p, f"step {t}: stateful vs functional", loose)
        assert _signature(opt.state) == stateful_signature
        assert _avals(opt.state) == _avals(s_jit)   # the same state, over a flat list
        assert int(opt.iterations) == int(kopt.functional.iteration_count(s_jit))
    assert opt._step._cache_size() == 1   # kopt's own compiled step: no public counter

    # get_weights -> set_weights leaves the state bit for bit as it was.
    before = [np.asarray(x) for x in jax.tree.leaves(opt.state)]
    weights = opt.get_weights()
    opt.set_weights(weights)
    after = jax.tree.leaves(opt.state)
    assert _signature(opt.state) == stateful_signature
    for x, y in zip(after, before):
        np.testing.assert_array_equal(np.asarray(x), y)
    for x, y in zip(opt.get_weights(), weights):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
