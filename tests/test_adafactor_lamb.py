"""Adafactor and Lamb, in both layers.

- Against Keras 3 itself (`KERAS_BACKEND=jax`, its `stateless_apply` jitted): 12 steps on
  variables of rank 0 to 3 (the 1-d one all zeros, so that Adafactor's `epsilon_2` floor
  and Lamb's trust ratio of 1 are hit), through kopt's functional transform (jitted) and
  its stateful facade. Params after every step, `iterations`, the EMA and the final slots
  all agree to float32 rounding. Per optimizer: its defaults, then one case with all its
  hyperparameters changed and every cross-cutting option at once (weight decay with a
  mask, a schedule, `use_ema` with overwrite, `loss_scale_factor`,
  `gradient_accumulation_steps`) to keep the compilations few. The three clip options
  are spread over the cases (clipnorm: Adafactor, clipvalue: Lamb, global_clipnorm: a
  third Adafactor case).
- Against the float64 references of `references_adafactor_lamb`, on a nested pytree.
- `get_weights`/`set_weights`: the slot-major order, Adafactor's factored shapes, a round
  trip that resumes exactly, and errors that change nothing.
- Bad arguments in both layers, and the Keras signatures.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.functional.adafactor import AdafactorState, adafactor
from kopt.functional.lamb import LambState, lamb
from kopt.stateful.adafactor import Adafactor
from kopt.stateful.lamb import Lamb

try:  # tests/ is not a package: pytest puts it on sys.path
    import references_adafactor_lamb as ref
    import test_reference as harness
except ImportError:
    from tests import references_adafactor_lamb as ref
    from tests import test_reference as harness

FUNCTIONS = {"Adafactor": adafactor, "Lamb": lamb}
CLASSES = {"Adafactor": Adafactor, "Lamb": Lamb}
# Keras's per-variable slots, in kopt's get_weights order.
KERAS_SLOTS = {"Adafactor": ("_r", "_c", "_v"), "Lamb": ("_momentums", "_velocities")}
KOPT_SLOTS = {"Adafactor": ("r", "c", "v"), "Lamb": ("m", "v")}

SHAPES = [(), (3,), (4, 3), (2, 3, 4)]
ZERO = 1          # this variable starts at zero
EXCLUDED = (0, 2)  # excluded from weight decay where a case says `mask`
STEPS = 12


def make_data(seed=0, steps=STEPS, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    params[ZERO] = np.zeros(SHAPES[ZERO], np.float32)
    grads = [[(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return params, grads


CASES = [
    ("Adafactor", {}),
    ("Adafactor", dict(schedule=(0.5, 3, 0.5), beta_2_decay=-0.6, epsilon_1=1e-20, epsilon_2=1e-2,
                       clip_threshold=0.5, relative_step=False, weight_decay=0.05, mask=True,
                       clipnorm=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3,
                       loss_scale_factor=8.0, gradient_accumulation_steps=2)),
    ("Adafactor", dict(learning_rate=0.2, global_clipnorm=2.0)),
    ("Lamb", {}),
    ("Lamb", dict(schedule=(0.05, 3, 0.5), beta_1=0.8, beta_2=0.95, epsilon=1e-4, weight_decay=0.05,
                  mask=True, clipvalue=0.5, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3,
                  loss_scale_factor=8.0, gradient_accumulation_steps=2)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _kopt_kwargs(kwargs):
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        kwargs["learning_rate"] = kopt.schedules.ExponentialDecay(*kwargs.pop("schedule"))
    kwargs.pop("mask", None)
    return kwargs


def _mask(kwargs):
    return [i not in EXCLUDED for i in range(len(SHAPES))] if kwargs.get("mask") else None


def run_keras(cls_name, kwargs, params, grads_seq):
    """Keras's own trajectory: `(params, iterations, ema)` per step, and its final slots."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    kw = dict(kwargs)
    if "schedule" in kw:
        kw["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(*kw.pop("schedule"))
    use_mask = kw.pop("mask", False)
    opt = getattr(keras.optimizers, cls_name)(**kw)
    variables = [keras.Variable(p, dtype="float32") for p in params]
    if use_mask:
        opt.exclude_from_weight_decay(var_list=[variables[i] for i in EXCLUDED])
    opt.build(variables)
    index = {id(v): k for k, v in enumerate(opt.variables)}
    ema_index = [index[id(v)] for v in opt._model_variables_moving_average] if opt.use_ema else None
    per_update = opt.gradient_accumulation_steps or 1
    step = jax.jit(lambda train, state, grads: opt.stateless_apply(state, grads, train))
    train = [v.value for v in variables]
    state = [v.value for v in opt.variables]
    out = []
    # Keras's ops are written for standard dtype promotion (python scalars mixed freely).
    with jax.numpy_dtype_promotion("standard"):
        for grads in grads_seq:
            train, state = step(train, state, [jnp.asarray(g) for g in grads])
            ema = None if ema_index is None else [np.asarray(state[k]) for k in ema_index]
            out.append(([np.asarray(x) for x in train],
                        int(state[index[id(opt._iterations)]]) // per_update, ema))
    slots = [np.asarray(state[index[id(v)]], np.float64)
             for attr in KERAS_SLOTS[cls_name] for v in getattr(opt, attr)]
    return out, slots


def run_functional(cls_name, kwargs, params, grads_seq):
    tx = FUNCTIONS[cls_name](**_kopt_kwargs(kwargs), weight_decay_mask=_mask(kwargs))

    @jax.jit
    def step(p, state, grads):
        updates, state = tx.update(grads, state, p)
        return kopt.functional.apply_updates(p, updates), state

    p = [jnp.asarray(x) for x in params]
    state = tx.init(p)
    out = []
    for grads in grads_seq:
        p, state = step(p, state, [jnp.asarray(g) for g in grads])
        ema = None if state.ema is None else [np.asarray(x) for x in state.ema.to_leaves()]
        out.append(([np.asarray(x) for x in p], int(kopt.functional.iteration_count(state)), ema))
    slots = [np.asarray(x, np.float64) for name in KOPT_SLOTS[cls_name]
             for x in getattr(state, name).to_leaves()]
    return out, slots


def run_stateful(cls_name, kwargs, params, grads_seq):
    opt = CLASSES[cls_name](**_kopt_kwargs(kwargs))
    variables = [kopt.Variable(p, name=f"v{i}") for i, p in enumerate(params)]
    if kwargs.get("mask"):
        opt.exclude_from_weight_decay(var_list=[variables[i] for i in EXCLUDED])
    out = []
    for grads in grads_seq:
        opt.apply_gradients(zip([jnp.asarray(g) for g in grads], variables))
        ema = None if opt.state.ema is None else [np.asarray(x) for x in opt.state.ema.to_leaves()]
        out.append(([v.numpy() for v in variables], int(opt.iterations), ema))
    return out, opt


def assert_runs_close(actual, expected, params):
    """Params and EMA within float32 rounding along the path (see `test_reference`);
    `iterations` exactly."""
    to64 = lambda xs: [np.asarray(x, np.float64) for x in xs]
    assert [it for _, it, _ in actual] == [it for _, it, _ in expected]
    harness.assert_trajectories_close([to64(p) for p, _, _ in actual],
                                      [to64(p) for p, _, _ in expected], start=params)
    if expected[0][2] is not None:
        harness.assert_trajectories_close([to64(e) for _, _, e in actual],
                                          [to64(e) for _, _, e in expected],
                                          start=[np.zeros_like(p) for p in params])


def assert_slots_close(actual, expected):
    assert [np.shape(a) for a in actual] == [np.shape(e) for e in expected]
    for k, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=1e-6, err_msg=f"slot entry {k}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_keras_in_both_layers(case):
    cls_name, kwargs = case
    params, grads = make_data(scale=kwargs.get("loss_scale_factor", 1.0))
    expected, keras_slots = run_keras(cls_name, kwargs, params, grads)
    # The trajectory really moves, far beyond the tolerance.
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected[-1][0], params)) > 1e-3

    functional, slots = run_functional(cls_name, kwargs, params, grads)
    assert_runs_close(functional, expected, params)
    assert_slots_close(slots, keras_slots)

    stateful, opt = run_stateful(cls_name, kwargs, params, grads)
    assert_runs_close(stateful, expected, params)
    # get_weights: iterations, micro_step (accumulation), the slots slot-major, ema, accum.
    weights = opt.get_weights()
    n = len(SHAPES)
    scalars = 1 + bool(kwargs.get("gradient_accumulation_steps"))
    assert int(weights[0]) == expected[-1][1]
    if scalars == 2:
        assert int(weights[1]) == STEPS
    n_slots = len(KOPT_SLOTS[cls_name])
    assert_slots_close(weights[scalars:scalars + n_slots * n], keras_slots)
    extra = weights[scalars + n_slots * n:]
    assert len(extra) == n * (bool(kwargs.get("use_ema")) + (scalars == 2))
    if kwargs.get("use_ema"):
        for a, b in zip(extra[:n], stateful[-1][2]):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Against the float64 references.

def _nested(leaves):
    return {"dense": {"kernel": leaves[2], "bias": leaves[ZERO]}, "conv": (leaves[3],),
            "scale": leaves[0]}


# The defaults run against Keras above; here, other hyperparameters. Adafactor's rate of 0.5
# is above 1/sqrt(t) from t = 5 on, so the relative-step cap is active.
REF_CASES = [
    ("adafactor", dict(learning_rate=0.5, beta_2_decay=-0.5, epsilon_2=1e-2, clip_threshold=0.7,
                       clipnorm=1.0, weight_decay=0.1, mask=True)),
    ("lamb", dict(schedule=(0.05, 4, 0.5), beta_1=0.8, beta_2=0.95, epsilon=1e-3, clipvalue=0.5,
                  weight_decay=0.1, mask=True)),
]


@pytest.mark.parametrize("case", REF_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REF_CASES)])
def test_matches_float64_reference(case):
    name, kwargs = case
    params, grads = make_data(seed=4)
    tree, grad_trees = _nested(params), [_nested(g) for g in grads]
    kopt_kw, ref_kw = dict(kwargs), dict(kwargs)
    if "schedule" in kwargs:
        lr0, decay_steps, rate = kopt_kw.pop("schedule")
        ref_kw.pop("schedule")
        kopt_kw["learning_rate"] = kopt.schedules.ExponentialDecay(lr0, decay_steps, rate)
        ref_kw["learning_rate"] = harness.ref.exponential_decay(lr0, decay_steps, rate)
    if kwargs.get("mask"):
        mask = _nested([i not in EXCLUDED for i in range(len(SHAPES))])
        kopt_kw.pop("mask")
        ref_kw.pop("mask")
        kopt_kw["weight_decay_mask"] = mask
        ref_kw["weight_decay_mask"] = jax.tree.leaves(mask)
    tx = {"adafactor": adafactor, "lamb": lamb}[name](**kopt_kw)
    expected = getattr(ref, name)(harness._as_f64(tree), [harness._as_f64(g) for g in grad_trees],
                                  **ref_kw)
    harness.assert_trajectories_close(harness.run_kopt(tx, tree, grad_trees), expected, start=tree)


# --------------------------------------------------------------------------------------
# State layout, weights I/O.

def test_adafactor_state_shapes_and_dtypes():
    """Rank >= 2 is factored over the last two axes; rank < 2 gets 0-d placeholders; bf16
    params get float32 state and bf16 updates; `update` keeps the state's types
    (what lax.cond needs). All through eval_shape: nothing is compiled."""
    params = {"s": jnp.ones(()), "b": jnp.ones((3,), jnp.bfloat16), "k": jnp.ones((4, 3)),
              "c": jnp.ones((2, 3, 4)), "d": jnp.ones((2, 3, 4, 5))}
    tx = adafactor(0.1)
    state = jax.eval_shape(tx.init, params)
    assert isinstance(state, AdafactorState)
    shapes = {f: state.r.layout.treedef.unflatten([x.shape for x in getattr(state, f).to_leaves()])
              for f in ("r", "c", "v")}
    assert shapes["r"] == {"s": (), "b": (), "k": (4,), "c": (2, 3), "d": (2, 3, 4)}
    assert shapes["c"] == {"s": (), "b": (), "k": (3,), "c": (2, 4), "d": (2, 3, 5)}
    assert shapes["v"] == jax.tree.map(jnp.shape, params)
    assert {x.dtype for x in jax.tree.leaves((state.r, state.c, state.v))} == {jnp.dtype("float32")}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.eval_shape(tx.update, grads, state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    same = lambda a, b: jax.tree.structure(a) == jax.tree.structure(b) and all(
        (x.shape, x.dtype) == (y.shape, y.dtype) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(new_state, state)
    lamb_state = jax.eval_shape(lamb(0.1).init, params)
    assert isinstance(lamb_state, LambState)
    assert same(jax.eval_shape(lamb(0.1).update, grads, lamb_state, params)[1], lamb_state)


@pytest.mark.parametrize("cls_name", ["Adafactor", "Lamb"])
def test_set_weights_round_trip_and_slot_order(cls_name):
    params, grads = make_data(seed=2, steps=5)
    cls = CLASSES[cls_name]
    kw = dict(learning_rate=0.1)
    straight_vars = [kopt.Variable(p, name=f"v{i}") for i, p in enumerate(params)]
    straight = cls(**kw)
    for g in grads[:3]:
        straight.apply_gradients(zip(g, straight_vars))
    weights = straight.get_weights()

    # Slot-major: every variable's first slot, then every variable's second, ...
    n = len(SHAPES)
    if cls_name == "Adafactor":
        row = [s[:-1] if len(s) >= 2 else () for s in SHAPES]
        col = [s[:-2] + s[-1:] if len(s) >= 2 else () for s in SHAPES]
        want = [()] + row + col + SHAPES
    else:
        want = [()] + SHAPES + SHAPES
    assert [w.shape for w in weights] == want
    assert weights[0].dtype == np.int32 and int(weights[0]) == 3
    names = KOPT_SLOTS[cls_name]
    for k, (name, j) in enumerate([(name, j) for name in names for j in range(n)], start=1):
        np.testing.assert_array_equal(weights[k], getattr(straight.state, name).leaf(j))
    if cls_name == "Adafactor":   # the placeholders of rank < 2 never move
        for j in (0, 1):
            assert float(weights[1 + j]) == 0.0 and float(weights[1 + n + j]) == 0.0

    values = [v.numpy().copy() for v in straight_vars]
    resumed_vars = [kopt.Variable(x, name=f"v{i}") for i, x in enumerate(values)]
    resumed = cls.from_config(straight.get_config())
    assert resumed.get_config() == straight.get_config()
    resumed.build(resumed_vars)

    # Errors name the entry and change nothing.
    before = resumed.get_weights()
    bad = list(weights)
    bad[1 + 2] = np.zeros((3, 4), np.float32)   # first slot of the (4, 3) variable
    with pytest.raises(ValueError, match=rf"entry 3 \({names[0]} of variable 'v2'\).*\(3, 4\)"):
        resumed.set_weights(bad)
    with pytest.raises(ValueError, match=f"expected a list of {len(weights)} arrays"):
        resumed.set_weights(weights[:-1])
    for a, b in zip(resumed.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)

    resumed.set_weights(weights)
    for a, b in zip(resumed.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    for g in grads[3:]:
        straight.apply_gradients(zip(g, straight_vars))
        resumed.apply_gradients(zip(g, resumed_vars))
    for a, b in zip(resumed_vars, straight_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Arguments.

@pytest.mark.parametrize("cls_name", ["Adafactor", "Lamb"])
def test_keras_signature_and_defaults(cls_name):
    keras = pytest.importorskip("keras")
    theirs = inspect.signature(getattr(keras.optimizers, cls_name)).parameters
    problems = []
    for where, fn in (("class", CLASSES[cls_name]), ("functional", FUNCTIONS[cls_name])):
        ours = inspect.signature(fn).parameters
        for arg, param in theirs.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD or (where == "functional" and arg == "name"):
                continue
            if arg not in ours:
                problems.append(f"{where}: missing {arg}")
            elif ours[arg].default != param.default:
                problems.append(f"{where}: {arg}={ours[arg].default!r}, Keras {param.default!r}")
        for extra in ("bucket_threshold",) + (("weight_decay_mask",) if where == "functional" else ()):
            assert extra in ours
    assert problems == []


@pytest.mark.parametrize("cls_name,kwargs,message", [
    ("Adafactor", dict(beta_2_decay=0.5), "beta_2_decay=0.5"),
    ("Adafactor", dict(beta_2_decay="fast"), "beta_2_decay='fast'"),
    ("Adafactor", dict(epsilon_1=-1.0), "epsilon_1=-1.0"),
    ("Adafactor", dict(epsilon_2=-1e-3), "epsilon_2=-0.001"),
    ("Adafactor", dict(clip_threshold=0.0), "clip_threshold=0.0"),
    ("Adafactor", dict(relative_step="yes"), "relative_step='yes'"),
    ("Lamb", dict(beta_1=1.5), "beta_1=1.5"),
    ("Lamb", dict(beta_2=-0.1), "beta_2=-0.1"),
    ("Lamb", dict(epsilon=-1.0), "epsilon=-1.0"),
    ("Lamb", dict(learning_rate=-1.0), "learning_rate=-1.0"),
    ("Adafactor", dict(clipnorm=1.0, clipvalue=0.5), "clipvalue=0.5"),
    ("Lamb", dict(gradient_accumulation_steps=1), "gradient_accumulation_steps=1"),
    ("Adafactor", dict(use_ema=True, ema_momentum=1.5), "ema_momentum=1.5"),
    ("Lamb", dict(loss_scale_factor=0.0), "loss_scale_factor=0.0"),
    ("Adafactor", dict(bucket_threshold=-1), "bucket_threshold=-1"),
])
def test_bad_arguments_are_rejected_in_both_layers(cls_name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[cls_name](**kwargs)
    with pytest.raises(ValueError, match=message):
        CLASSES[cls_name](**kwargs)


@pytest.mark.parametrize("cls_name", ["Adafactor", "Lamb"])
def test_update_needs_params_and_unknown_arguments_are_errors(cls_name):
    tx = FUNCTIONS[cls_name](0.1)
    params = {"w": jnp.ones((2, 3))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="lr.*Use `learning_rate`"):
        CLASSES[cls_name](lr=0.1)
    with pytest.raises(TypeError):
        FUNCTIONS[cls_name](0.1, foo=1)


# --------------------------------------------------------------------------------------
# A zero row meeting a zero column (issue 13, item 16).


def _zero_cross_data():
    rng = np.random.default_rng(3)
    params = rng.normal(size=(4, 5)).astype(np.float32)
    grads = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
    for g in grads:
        g[1, :] = 0.0   # an all-zero row ...
        g[:, 2] = 0.0   # ... and an all-zero column
    return params, grads


def test_adafactor_stays_finite_where_a_zero_row_meets_a_zero_column():
    keras = pytest.importorskip("keras")
    params, grads = _zero_cross_data()

    # Keras 3 gives NaN from the first step: its factored v underflows to 0 at (1, 2).
    variable = keras.Variable(params)
    keras.optimizers.Adafactor(learning_rate=0.01).apply_gradients([(grads[0], variable)])
    assert np.isnan(np.asarray(variable.value)).any()

    tx = adafactor(0.01)
    step = jax.jit(tx.update)
    p, state = jnp.asarray(params), tx.init(jnp.asarray(params))
    deltas = []
    for g in grads:
        d, state = step(jnp.asarray(g), state, p)
        p = p + d
        deltas.append(np.asarray(d))
        assert np.isfinite(np.asarray(p)).all()
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    # Zero gradients give zero steps, in the zero row and column alike.
    for d in deltas:
        assert not d[1, :].any() and not d[:, 2].any()

    # Step 1 in float64: beta_hat = 0, so R and C are the means of g^2 + epsilon_1, and
    # the step is g * (R / mean R)^-1/2 * C^-1/2, clipped, times max(eps_2, RMS(p)) * lr.
    g = grads[0].astype(np.float64)
    sq = g**2 + 1e-30
    r, c = sq.mean(axis=1), sq.mean(axis=0)
    u = g * ((r / r.mean()) ** -0.5)[:, None] * (c**-0.5)[None, :]
    u = u / max(1.0, np.sqrt(np.mean(u**2)) / 1.0)
    expected = -max(1e-3, np.sqrt(np.mean(params.astype(np.float64) ** 2))) * 0.01 * u
    np.testing.assert_allclose(deltas[0], expected, rtol=2e-6, atol=1e-12)


def test_adafactor_is_keras_exactly_where_keras_is_finite():
    """The guard changes nothing away from the underflow: one zero row alone (no zero
    column) keeps v > 0, and kopt's step equals Keras's to float32 rounding there."""
    keras = pytest.importorskip("keras")
    params, grads = _zero_cross_data()
    g = grads[0].copy()
    g[:, 2] = 1.0   # the zero column filled: Keras stays finite
    variable = keras.Variable(params)
    keras.optimizers.Adafactor(learning_rate=0.01).apply_gradients([(g, variable)])
    keras_value = np.asarray(variable.value)
    assert np.isfinite(keras_value).all()
    tx = adafactor(0.01)
    d, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.asarray(params)), jnp.asarray(params))
    np.testing.assert_allclose(np.asarray(params + d), keras_value, rtol=1e-6, atol=1e-7)
