"""kopt.functional against float64 NumPy references, Keras 3 and (where the maths coincide) optax.

Every case runs 20 jitted steps on a random nested pytree with mixed shapes (a scalar, a
(3, 4), a (2, 3, 5) and a (300, 250) leaf, in a dict holding a list and a tuple), with fresh
random gradients per step, and compares every step's params. Each case runs with the
default `bucket_threshold`, with bucketing off (0), with 65536 (all but the large leaf share
one flat state buffer) and with 20 (the scalar and the (3, 4) leaf bucketed, the others
not); duplicates of the default are dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf

try:
    from tests import references as ref
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import references as ref

NUM_STEPS = 20
THRESHOLDS = [pytest.param({}, id=f"buckets-default={kf.DEFAULT_BUCKET_THRESHOLD}")] + [
    pytest.param({"bucket_threshold": n}, id=f"buckets={n}")
    for n in (0, 1 << 16, 20)
    if n != kf.DEFAULT_BUCKET_THRESHOLD
]
# Tolerance. kopt runs in float32, the reference in float64. Each step rounds the update
# (relative to the step size: e.g. float32(0.999) makes Adam's `1 - beta_2` off by 1.3e-5
# relative, exactly as in Keras) and the sum `param + update` (relative to |param|). These
# errors add up along the trajectory, so the bound is RTOL * (|param| + path length so
# far) + ATOL: a plain rtol on |param| fails, wrongly, for params that pass near zero.
RTOL, ATOL = 1e-5, 1e-6


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
    return {
        "dense": [f(3, 4), f()],  # a list, with a scalar leaf
        "conv": (f(2, 3, 5), f(300, 250)),  # a tuple, with a leaf > 65,536 elements
    }


# Per-leaf gradient scales (in flatten order: conv[0], conv[1], dense[0], dense[1]) so that
# per-tensor clipping (clipnorm=1) clips some leaves and leaves the scalar alone.
GRAD_SCALES = [1.0, 0.3, 2.0, 0.05]


def make_grads(params, num_steps=NUM_STEPS, seed=1):
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    steps = []
    for _ in range(num_steps):
        steps.append(
            treedef.unflatten(
                [
                    jnp.asarray((scale * rng.normal(size=np.shape(p))).astype(np.float32))
                    for p, scale in zip(leaves, GRAD_SCALES)
                ]
            )
        )
    return steps


PARAMS = make_params()
GRADS = make_grads(PARAMS)
# Weight-decay mask: the scalar and the (2, 3, 5) leaf do not decay.
MASK = {"dense": [True, False], "conv": (False, True)}


def _as_f64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _translate(kwargs):
    """Split a case's kwargs into kopt's and the reference's.

    `schedule=(lr0, decay_steps, rate)` becomes an ExponentialDecay learning rate,
    `mask=True` becomes `weight_decay_mask=MASK` (flattened for the reference).
    """
    kopt_kw, ref_kw = dict(kwargs), dict(kwargs)
    if "schedule" in kwargs:
        lr0, decay_steps, rate = kopt_kw.pop("schedule")
        ref_kw.pop("schedule")
        kopt_kw["learning_rate"] = kopt.schedules.ExponentialDecay(lr0, decay_steps, rate)
        ref_kw["learning_rate"] = ref.exponential_decay(lr0, decay_steps, rate)
    if kwargs.get("mask"):
        kopt_kw.pop("mask")
        ref_kw.pop("mask")
        kopt_kw["weight_decay_mask"] = MASK
        ref_kw["weight_decay_mask"] = jax.tree.leaves(MASK)
    return kopt_kw, ref_kw


def run_kopt(tx, params=PARAMS, grads_seq=GRADS):
    """The params after each of the jitted steps, as lists of float64 leaves."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    state = tx.init(params)
    out = []
    for grads in grads_seq:
        params, state = step(params, state, grads)
        out.append(_as_f64(params))
    return out


def assert_trajectories_close(actual, expected, start=PARAMS, rtol=RTOL, atol=ATOL):
    """Every step and leaf within `atol + rtol * (|expected| + path length)` (see RTOL)."""
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(start)]
    assert len(actual) == len(expected)
    prev = _as_f64(start)
    path = [np.zeros_like(p) for p in prev]
    for t, (a_step, e_step) in enumerate(zip(actual, expected), start=1):
        for i, (name, a, e) in enumerate(zip(names, a_step, e_step, strict=True)):
            assert a.shape == e.shape, (t, name)
            path[i] = path[i] + np.abs(e - prev[i])
            err = np.abs(a - e)
            tol = atol + rtol * (np.abs(e) + path[i])
            bad = ~(err <= tol)
            if np.any(bad):
                j = tuple(
                    int(k) for k in np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), np.shape(e))
                )
                raise AssertionError(
                    f"step {t}, leaf {name}: {int(np.sum(bad))}/{np.size(e)} elements off; "
                    f"worst at {j}: actual {a[j]!r}, expected {e[j]!r}, "
                    f"error {err[j]:.3g} > tolerance {tol[j]:.3g}"
                )
        prev = e_step


CASES = [
    # Each optimizer: its defaults, then each clip option once, with the other options
    # (hyperparameters, momentum variants, weight decay with a mask, a schedule) spread over
    # those cases to keep the number of compilations down.
    ("sgd", {}),
    ("sgd", {"learning_rate": 0.05, "momentum": 0.9, "clipnorm": 1.0, "weight_decay": 0.5, "mask": True}),
    ("sgd", {"learning_rate": 0.03, "momentum": 0.8, "nesterov": True, "clipvalue": 0.5}),
    (
        "sgd",
        {
            "schedule": (0.1, 5, 0.5),
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 0.5,
            "global_clipnorm": 20.0,
        },
    ),
    ("rmsprop", {}),
    (
        "rmsprop",
        {
            "learning_rate": 0.01,
            "rho": 0.8,
            "epsilon": 1e-3,
            "clipnorm": 1.0,
            "weight_decay": 0.5,
            "mask": True,
        },
    ),
    ("rmsprop", {"learning_rate": 0.01, "momentum": 0.9, "centered": True, "clipvalue": 0.5}),
    ("rmsprop", {"schedule": (0.02, 4, 0.3), "centered": True, "global_clipnorm": 20.0}),
    ("adam", {}),
    ("adam", {"learning_rate": 0.02, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "clipnorm": 1.0}),
    ("adam", {"learning_rate": 0.02, "amsgrad": True, "clipvalue": 0.5, "weight_decay": 0.5, "mask": True}),
    ("adam", {"schedule": (0.05, 5, 0.5), "amsgrad": True, "global_clipnorm": 20.0}),
    ("adamw", {}),
    (
        "adamw",
        {"schedule": (0.05, 5, 0.5), "weight_decay": 0.5, "mask": True, "amsgrad": True, "clipnorm": 1.0},
    ),
]


def _case_id(case):
    name, kwargs = case
    parts = [f"{k}={v}" for k, v in kwargs.items()]
    return name + ("[" + ",".join(parts) + "]" if parts else "[defaults]")


@pytest.mark.parametrize("buckets", THRESHOLDS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_float64_reference(case, buckets):
    name, kwargs = case
    kopt_kw, ref_kw = _translate(kwargs)
    tx = getattr(kf, name)(**kopt_kw, **buckets)
    expected = getattr(ref, name)(_as_f64(PARAMS), [_as_f64(g) for g in GRADS], **ref_kw)
    assert_trajectories_close(run_kopt(tx), expected)


def test_reference_cases_move_the_params():
    """Sanity check on the harness: the trajectories really move, far beyond the tolerance."""
    expected = ref.adam(_as_f64(PARAMS), [_as_f64(g) for g in GRADS])
    start = _as_f64(PARAMS)
    for p0, p in zip(start, expected[-1]):
        assert np.max(np.abs(p - p0)) > 100 * ATOL


# --------------------------------------------------------------------------------------
# Keras 3 itself.

KERAS_CASES = [
    ("SGD", "sgd", {"learning_rate": 0.03, "momentum": 0.8, "nesterov": True, "clipnorm": 1.0}),
    (
        "RMSprop",
        "rmsprop",
        {"learning_rate": 0.01, "momentum": 0.9, "centered": True, "global_clipnorm": 20.0},
    ),
    (
        "Adam",
        "adam",
        {"learning_rate": 0.02, "amsgrad": True, "clipvalue": 0.5, "weight_decay": 0.5, "mask": True},
    ),
    ("AdamW", "adamw", {"schedule": (0.05, 5, 0.5), "weight_decay": 0.5, "mask": True}),
]


def run_keras(keras, cls_name, kwargs, params=PARAMS, grads_seq=GRADS):
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        lr0, decay_steps, rate = kwargs.pop("schedule")
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(lr0, decay_steps, rate)
    use_mask = kwargs.pop("mask", False)
    opt = getattr(keras.optimizers, cls_name)(**kwargs)
    variables = [keras.Variable(np.asarray(p), dtype="float32") for p in jax.tree.leaves(params)]
    if use_mask:
        excluded = [v for v, m in zip(variables, jax.tree.leaves(MASK)) if not m]
        opt.exclude_from_weight_decay(var_list=excluded)
    opt.build(variables)
    # Keras's own functional path, jitted (its eager apply_gradients is far slower).
    step = jax.jit(lambda train, state, grads: opt.stateless_apply(state, grads, train))
    train = [v.value for v in variables]
    state = [v.value for v in opt.variables]
    out = []
    for grads in grads_seq:
        train, state = step(train, state, jax.tree.leaves(grads))
        out.append([np.asarray(v, np.float64) for v in train])
    return out


@pytest.mark.parametrize("case", KERAS_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_matches_keras(case):
    """Identical numerics with Keras 3: both in float32, so agreement is to float32 rounding."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    cls_name, name, kwargs = case
    kopt_kw, _ = _translate(kwargs)
    # Keras's ops are written for standard dtype promotion (python scalars mixed freely).
    with jax.numpy_dtype_promotion("standard"):
        expected = run_keras(keras, cls_name, kwargs)
    assert_trajectories_close(run_kopt(getattr(kf, name)(**kopt_kw)), expected)


# --------------------------------------------------------------------------------------
# optax, only where the formulas coincide.
#
# - Plain SGD is the same function.
# - SGD with momentum: optax keeps t = g + mu*t and steps -lr*t; Keras keeps v = mu*v - lr*g
#   and steps v. With a constant learning rate v = -lr*t exactly, and Nesterov matches too.
# - RMSprop: optax.rmsprop (eps_in_sqrt=True) traces the scaled update with momentum, which
#   is Keras's formula, centered or not.
# - Adam: optax adds eps to the bias-corrected root, Keras to the raw root; with eps=0 both
#   are lr * m_hat / sqrt(v_hat).


def _optax_cases():
    optax = pytest.importorskip("optax")
    return {
        "sgd-momentum": (kf.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
        "sgd-nesterov": (
            kf.sgd(0.03, momentum=0.8, nesterov=True),
            optax.sgd(0.03, momentum=0.8, nesterov=True),
        ),
        "rmsprop-centered-momentum": (
            kf.rmsprop(0.01, rho=0.8, momentum=0.9, epsilon=1e-6, centered=True),
            optax.rmsprop(0.01, decay=0.8, eps=1e-6, centered=True, momentum=0.9),
        ),
        "adam-eps0": (kf.adam(0.02, epsilon=0.0), optax.adam(0.02, eps=0.0)),
    }


@pytest.mark.parametrize("name", ["sgd-momentum", "sgd-nesterov", "rmsprop-centered-momentum", "adam-eps0"])
def test_matches_optax_where_formulas_coincide(name):
    ours, theirs = _optax_cases()[name]
    # The same jitted loop drives the optax transform. optax mixes int32 step counts with
    # floats, so it needs standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        expected = run_kopt(theirs)
    assert_trajectories_close(run_kopt(ours), expected)
