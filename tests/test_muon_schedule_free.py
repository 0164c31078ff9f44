"""Muon and ScheduleFreeAdamW, in both layers.

- 10 jitted steps on seven variables of ranks 0 to 3 (matrices on both of Muon's
  branches, wide and tall) through Keras 3 itself (`stateless_apply`, jitted), kopt's
  functional transform and the float64 references of `references_muon_sf`, in two cases
  per optimizer: Keras's defaults, then every argument of the optimizer changed together
  with the cross-cutting options (a clip option, weight decay with a mask, a schedule,
  loss scaling, EMA with overwrite, gradient accumulation). Two cases keep the compiles
  few;
- in the second case, the stateful class too, with `get_weights`/`set_weights` half-way
  (into a new optimizer made from the config, and back into the same one, which then
  continues bit for bit);
- Muon's choice of branch (paths, regexes, embeddings, `adam_mask`), the `get_weights`
  layout, Schedule-Free's evaluation point, dtypes, and bad arguments.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kopt
from kopt.functional.base import apply_updates, iteration_count
from kopt.functional.muon import muon, orthogonalize
from kopt.functional.schedule_free import schedule_free_adamw, schedule_free_eval_params
from kopt.stateful.muon import Muon
from kopt.stateful.schedule_free import ScheduleFreeAdamW
from tests.helpers import jit_max_traces

try:  # tests/ is not a package: pytest puts it on sys.path
    import references as base_ref
    import references_muon_sf as ref
    import test_reference as harness
except ImportError:
    from tests import references as base_ref
    from tests import references_muon_sf as ref
    from tests import test_reference as harness

# Paths in sorted order, so that the dict tree built from them flattens in this order.
# Muon's default branches: conv (3-D), dense/bias (1-D), embedding (name), head (with
# exclude_layers=["head"]) and scale (0-D) take AdamW; dense/kernel (wide) and
# tall/kernel (tall: Newton-Schulz runs on its transpose) take Muon.
NAMES = ["conv/kernel", "dense/bias", "dense/kernel", "embedding/embeddings", "head/kernel",
         "scale", "tall/kernel"]
SHAPES = [(2, 3, 4), (4,), (6, 4), (5, 3), (4, 2), (), (7, 3)]
GRAD_SCALES = [1.0, 0.5, 2.0, 1.0, 0.3, 0.1, 1.0]   # clipnorm=1 clips some leaves only
STEPS = 10
NO_DECAY = ["dense/bias", "dense/kernel"]   # the `mask` option: excluded from weight decay


def _data(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[(k * rng.normal(size=s)).astype(np.float32) for s, k in zip(SHAPES, GRAD_SCALES)]
             for _ in range(STEPS)]
    return params, grads


PARAMS, GRADS = _data()


def to_tree(leaves):
    tree = {}
    for name, leaf in zip(NAMES, leaves):
        *scopes, last = name.split("/")
        node = tree
        for s in scopes:
            node = node.setdefault(s, {})
        node[last] = leaf
    return tree


def _split(kwargs, schedule_cls):
    """Common case kwargs -> (optimizer kwargs, mask flag)."""
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        kwargs["learning_rate"] = schedule_cls(*kwargs.pop("schedule"))
    return kwargs, kwargs.pop("mask", False)


def run_keras(cls_name, kwargs):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    kwargs, masked = _split(kwargs, keras.optimizers.schedules.ExponentialDecay)
    opt = getattr(keras.optimizers, cls_name)(**kwargs)
    variables = []
    for name, p in zip(NAMES, PARAMS):
        *scopes, last = name.split("/")
        if scopes:
            with keras.name_scope(scopes[0]):
                variables.append(keras.Variable(p, name=last))
        else:
            variables.append(keras.Variable(p, name=last))
    assert [v.path for v in variables] == NAMES
    if masked:
        opt.exclude_from_weight_decay(var_list=[v for v in variables if v.path in NO_DECAY])
    opt.build(variables)
    step = jax.jit(lambda train, state, grads: opt.stateless_apply(state, grads, train))
    train, state = [v.value for v in variables], [v.value for v in opt.variables]
    out = []
    # Keras's ops are written for standard dtype promotion (python scalars mixed freely).
    with jax.numpy_dtype_promotion("standard"):
        for grads in GRADS:
            train, state = step(train, state, [jnp.asarray(g) for g in grads])
            out.append([np.asarray(v, np.float64) for v in train])
    return out


def run_functional(factory, kwargs, bucket_threshold=0):
    kwargs, masked = _split(kwargs, kopt.schedules.ExponentialDecay)
    if masked:
        kwargs["weight_decay_mask"] = to_tree([n not in NO_DECAY for n in NAMES])
    tx = factory(**kwargs, bucket_threshold=bucket_threshold)
    @jit_max_traces
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    params = to_tree([jnp.asarray(p) for p in PARAMS])
    state = tx.init(params)
    out = []
    for grads in GRADS:
        params, state = step(params, state, to_tree([jnp.asarray(g) for g in grads]))
        out.append(harness._as_f64(params))
    assert int(iteration_count(state)) == _real_steps(kwargs)
    return out, params, state


def _apply(opt, variables, grads_seq):
    out = []
    for grads in grads_seq:
        opt.apply_gradients(zip([jnp.asarray(g) for g in grads], variables))
        out.append([np.asarray(v.value, np.float64) for v in variables])
    return out


def run_stateful(cls, kwargs, bucket_threshold, resume_at, muon_vars=None):
    """The stateful trajectory. On the way, after call `resume_at`: a new optimizer from
    the config, built and given `get_weights()`, holds the same weights (and, fresh, the
    documented layout; `muon_vars`: the variables on Muon's Muon branch); and the
    optimizer reloaded with those weights continues bit for bit."""
    kwargs, masked = _split(kwargs, kopt.schedules.ExponentialDecay)

    def make():
        opt = cls(**kwargs, bucket_threshold=bucket_threshold)
        if masked:
            opt.exclude_from_weight_decay(var_names=["^" + n for n in NO_DECAY])
        return opt

    opt = make()
    variables = [kopt.Variable(p, name=n) for n, p in zip(NAMES, PARAMS)]
    out = _apply(opt, variables, GRADS[:resume_at])
    weights = opt.get_weights()
    values = [np.array(v.value) for v in variables]
    out += _apply(opt, variables, GRADS[resume_at:])
    assert int(opt.iterations) == _real_steps(kwargs)
    final = [np.array(v.value) for v in variables]
    final_weights = opt.get_weights()

    fresh = cls.from_config(opt.get_config())
    assert fresh.get_config() == opt.get_config()
    if masked:
        fresh.exclude_from_weight_decay(var_names=["^" + n for n in NO_DECAY])
    fresh.build([kopt.Variable(x, name=n) for n, x in zip(NAMES, values)])
    first_v = _check_fresh_weights(fresh, values, muon_vars)
    before = fresh.get_weights()
    with pytest.raises(ValueError, match=fr"entry {first_v} \(v of variable 'conv/kernel'\) has "
                                         r"shape \(9, 9\)"):
        fresh.set_weights(weights[:first_v] + [np.zeros((9, 9))] + weights[first_v + 1:])
    with pytest.raises(ValueError, match=f"expected a list of {len(weights)} arrays"):
        fresh.set_weights(weights[:-1])
    for a, b in zip(fresh.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh.set_weights(weights)
    assert int(fresh.iterations) == int(weights[0])
    for a, b in zip(fresh.get_weights(), weights, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)

    opt.set_weights(weights)
    for v, x in zip(variables, values):
        v.assign(x)
    _apply(opt, variables, GRADS[resume_at:])
    for v, x in zip(variables, final):
        np.testing.assert_array_equal(v.numpy(), x, err_msg=v.name)
    for a, b in zip(opt.get_weights(), final_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    return out, opt


def _check_fresh_weights(opt, values, muon_vars):
    """The documented layout: [iterations, micro_step (with accumulation), then slot by
    slot: m (Muon) or z (Schedule-Free), v, ema (with EMA), accum (with accumulation)].
    Returns the index of the first `v` entry."""
    weights = opt.get_weights()
    n = len(NAMES)
    scalars = 2 if opt.gradient_accumulation_steps else 1
    slots = 2 + bool(opt.use_ema) + bool(opt.gradient_accumulation_steps)
    assert len(weights) == scalars + slots * n and weights[0].shape == () and int(weights[0]) == 0
    assert all(w.shape == () and int(w) == 0 for w in weights[1:scalars])
    first, second = weights[scalars:scalars + n], weights[scalars + n:scalars + 2 * n]
    if isinstance(opt, Muon):   # m like the variables; v too, but (0,) on the Muon branch
        assert [w.shape for w in first] == SHAPES and not any(map(np.any, first + second))
        assert {name for name, v in zip(NAMES, second) if v.shape == (0,)} == muon_vars
    else:   # z starts at the variables, v at zero
        for w, x in zip(first, values, strict=True):
            np.testing.assert_array_equal(w, x)
        assert not any(map(np.any, second))
    return scalars + n


def _real_steps(kwargs):
    return STEPS // (kwargs.get("gradient_accumulation_steps") or 1)


def _reference_kwargs(kwargs):
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        kwargs["learning_rate"] = base_ref.exponential_decay(*kwargs.pop("schedule"))
    if kwargs.pop("mask", False):
        kwargs["weight_decay_mask"] = [n not in NO_DECAY for n in NAMES]
    return kwargs


def assert_close(actual, expected, rtol=harness.RTOL, atol=harness.ATOL):
    """Each step and leaf within `atol + rtol * (|expected| + path length)`."""
    harness.assert_trajectories_close(actual, expected, start=to_tree(PARAMS), rtol=rtol, atol=atol)


def assert_same(actual, expected):
    # The stateful step compiles `apply_updates` into the same jit: agreement to an ulp.
    for a_step, e_step in zip(actual, expected, strict=True):
        for a, e in zip(a_step, e_step, strict=True):
            np.testing.assert_allclose(a, e, rtol=2e-7, atol=1e-7)


# --------------------------------------------------------------------------------------
# Muon against Keras 3, the float64 reference and the stateful class.

MUON_CASES = [
    {"exclude_layers": ["head"]},   # Keras's defaults otherwise
    {"schedule": (0.02, 4, 0.5), "nesterov": False, "rms_rate": None, "adam_lr_ratio": 0.1,
     "ns_steps": 3, "momentum": 0.9, "adam_beta_1": 0.8, "adam_beta_2": 0.99, "epsilon": 1e-5,
     "muon_a": 2.0, "muon_b": -1.5, "muon_c": 0.5, "exclude_embeddings": False,
     "exclude_layers": ["hea.", "^tall"], "weight_decay": 0.1, "adam_weight_decay": 0.05,
     "mask": True, "clipnorm": 1.0, "loss_scale_factor": 4.0, "use_ema": True, "ema_momentum": 0.9,
     "ema_overwrite_frequency": 3, "gradient_accumulation_steps": 2},
]
# Against float64 the usual tolerance holds, although Newton-Schulz runs in float32 in
# kopt (and Keras): the worst error measured is 2.5e-6 of (|param| + path length), for
# a bound of 1e-5 (plus atol 1e-6). The iteration normalises its input first, and its
# few steps stay well conditioned on these matrices.


@pytest.mark.parametrize("case", MUON_CASES, ids=["defaults", "options"])
def test_muon_matches_keras_reference_and_stateful(case):
    expected = run_keras("Muon", case)
    functional, _, _ = run_functional(muon, case)
    assert_close(functional, expected)
    assert_close(functional, ref.muon(PARAMS, GRADS, NAMES, **_reference_kwargs(case)))
    if case is MUON_CASES[1]:   # at defaults the stateful class runs the same transform
        stateful, _ = run_stateful(Muon, case, 0, resume_at=5,
                                   muon_vars={"dense/kernel", "embedding/embeddings"})
        assert_same(stateful, functional)


def test_orthogonalize_approximates_the_polar_factor():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 4)), jnp.float32)
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    ns = jax.jit(orthogonalize, static_argnums=(1, 2, 3, 4))
    out = np.asarray(ns(x, 5, 3.4445, -4.7750, 2.0315), np.float64)
    # Keras's coefficients give singular values in roughly [0.7, 1.2], not exactly 1.
    s = np.linalg.svd(out, compute_uv=False)
    assert out.shape == (6, 4) and np.all((s > 0.6) & (s < 1.25))
    np.testing.assert_allclose(out @ (vt.T @ vt), out, atol=1e-5)   # same row space
    np.testing.assert_allclose(u @ (u.T @ out), out, atol=1e-5)      # same column space
    np.testing.assert_allclose(out, ref.newton_schulz(np.asarray(x, np.float64), 5, 3.4445,
                                                      -4.7750, 2.0315), atol=2e-5)
    np.testing.assert_allclose(ns(x.T, 5, 3.4445, -4.7750, 2.0315), out.T, atol=1e-6)


def test_muon_branches_from_paths_regexes_and_adam_mask():
    params = to_tree([jnp.ones(s) for s in SHAPES])

    def v_shapes(**kw):
        state = muon(**kw).init(params)
        shapes = [v.shape for v in state.v.to_leaves()]
        assert [m.shape for m in state.m.to_leaves()] == SHAPES
        return {n for n, s, shape in zip(NAMES, shapes, SHAPES) if s != shape}

    assert v_shapes() == {"dense/kernel", "head/kernel", "tall/kernel"}
    assert v_shapes(exclude_layers=["head"]) == {"dense/kernel", "tall/kernel"}
    assert v_shapes(exclude_embeddings=False, exclude_layers=["^t"]) == {
        "dense/kernel", "head/kernel", "embedding/embeddings"}
    mask = to_tree([n == "dense/kernel" for n in NAMES])
    assert v_shapes(adam_mask=mask) == {"head/kernel", "tall/kernel"}
    assert v_shapes(adam_mask=lambda p: jax.tree.map(lambda x: x.shape == (7, 3), p)) == {
        "dense/kernel", "head/kernel"}
    with pytest.raises(ValueError, match="adam_mask must have the structure of params"):
        muon(adam_mask=[True]).init(params)

    # The stateful class decides by variable name (Keras: path), at build.
    opt = Muon(exclude_layers=["head"])
    opt.build([kopt.Variable(p, name=n) for n, p in zip(NAMES, PARAMS)])
    weights = opt.get_weights()
    assert len(weights) == 1 + 2 * len(NAMES)
    assert [w.shape for w in weights[1:8]] == SHAPES
    v = dict(zip(NAMES, (w.shape for w in weights[8:])))
    assert v == {**dict(zip(NAMES, SHAPES)), "dense/kernel": (0,), "tall/kernel": (0,)}


def test_muon_params_needed_only_for_weight_decay():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = muon()
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(grads, tx.init(params))
    tx = muon(weight_decay=None, adam_weight_decay=0)
    updates, _ = jax.eval_shape(tx.update, grads, tx.init(params))   # traces, no compile
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


# --------------------------------------------------------------------------------------
# ScheduleFreeAdamW against Keras 3, the float64 reference and the stateful class.

SF_CASES = [   # with bucket_threshold: all leaves in one bucket; the four of <= 20 elements
    ({}, 1 << 16),
    ({"schedule": (0.05, 4, 0.5), "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6, "warmup_steps": 3,
      "weight_decay": 0.1, "mask": True, "global_clipnorm": 2.0, "loss_scale_factor": 4.0,
      "use_ema": True, "ema_momentum": 0.8, "ema_overwrite_frequency": 3,
      "gradient_accumulation_steps": 2}, 20),
]


@pytest.mark.parametrize("case,threshold", SF_CASES, ids=["defaults", "options"])
def test_schedule_free_matches_keras_reference_and_stateful(case, threshold):
    expected = run_keras("ScheduleFreeAdamW", case)
    functional, params, state = run_functional(schedule_free_adamw, case, threshold)
    assert_close(functional, expected)
    reference, averages = ref.schedule_free_adamw(PARAMS, GRADS, **_reference_kwargs(case))
    assert_close(functional, reference)
    # The evaluation point x against the reference's (measured error <= 1e-6: recovering
    # x divides the float32 rounding of y and z by beta_1).
    x = harness._as_f64(schedule_free_eval_params(params, state, case.get("beta_1", 0.9)))
    for a, e in zip(x, averages[-1], strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=3e-6)
    if case is SF_CASES[1][0]:
        stateful, opt = run_stateful(ScheduleFreeAdamW, case, threshold, resume_at=5)
        assert_same(stateful, functional)
        for a, e in zip(opt.eval_values(), x, strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-6, atol=1e-7)


def test_schedule_free_eval_point_before_training_and_as_a_pytree():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}
    state = schedule_free_adamw().init(params)
    x = schedule_free_eval_params(params, state)   # z == y at the start, so x == y
    assert jax.tree.map(lambda a: a.dtype, x) == jax.tree.map(lambda a: a.dtype, params)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)
    # z is a copy: never the params' own buffer (the stateful step donates both).
    assert state.z.leaf(1).unsafe_buffer_pointer() != params["w"].unsafe_buffer_pointer()
    with pytest.raises(ValueError, match="eval_values"):
        ScheduleFreeAdamW().eval_values()
    with pytest.raises(ValueError, match="beta_1"):
        schedule_free_eval_params(params, state, beta_1=0.0)


def test_schedule_free_needs_params():
    tx = schedule_free_adamw()
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(params, tx.init(params))


# --------------------------------------------------------------------------------------
# Both optimizers: weights, dtypes, signatures, configs, bad arguments.

@pytest.mark.parametrize("factory", [muon, schedule_free_adamw], ids=["muon", "schedule_free"])
def test_dtypes_and_state_structure_are_stable(factory):
    params = {"w": jnp.ones((3, 4), jnp.bfloat16), "b": jnp.ones((4,), jnp.float32),
              "k": jnp.ones((2, 3), jnp.bfloat16)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = factory(learning_rate=0.1)
    state = tx.init(params)
    updates, new_state = jax.eval_shape(tx.update, grads, state, params)   # traced, not compiled
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(new_state)] == [
        (a.shape, a.dtype) for a in jax.tree.leaves(state)]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.v))   # bf16 -> f32 state


def test_signatures_match_keras():
    keras = pytest.importorskip("keras")
    problems = []
    for ours_cls, fn in ((Muon, muon), (ScheduleFreeAdamW, schedule_free_adamw)):
        theirs = inspect.signature(getattr(keras.optimizers, ours_cls.__name__)).parameters
        for where, ours in (("class", inspect.signature(ours_cls).parameters),
                            ("functional", inspect.signature(fn).parameters)):
            for arg, param in theirs.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD or (where == "functional"
                                                                    and arg == "name"):
                    continue
                if arg not in ours:
                    problems.append(f"{where} {ours_cls.__name__}: missing {arg}")
                elif ours[arg].default != param.default:
                    problems.append(f"{where} {ours_cls.__name__}: {arg}={ours[arg].default!r}, "
                                    f"Keras {param.default!r}")
        # The class keeps Keras's positional order too.
        keras_order = [a for a in theirs if a != "kwargs"]
        assert [a for a in inspect.signature(ours_cls).parameters if a in theirs][:-1] == keras_order
    assert problems == []


BAD = [
    (muon, dict(momentum=1.5), r"`momentum`.*momentum=1.5"),
    (muon, dict(ns_steps=-1), r"`ns_steps`.*ns_steps=-1"),
    (muon, dict(ns_steps=2.5), r"`ns_steps`.*ns_steps=2.5"),
    (muon, dict(ns_steps=101), r"`ns_steps` must be an integer in \[0, 100\].*ns_steps=101"),
    (muon, dict(ns_steps=10**9), r"`ns_steps`.*ns_steps=1000000000"),
    (muon, dict(exclude_layers="dense"), r"`exclude_layers` must be a list"),
    (muon, dict(exclude_layers=["("]), r"valid regular expressions.*'\('"),
    (muon, dict(adam_beta_1=2.0), r"`adam_beta_1`.*adam_beta_1=2.0"),
    (muon, dict(adam_beta_2=-0.1), r"`adam_beta_2`"),
    (muon, dict(adam_weight_decay=-1.0), r"`adam_weight_decay`.*adam_weight_decay=-1.0"),
    (muon, dict(weight_decay=-1.0), r"`weight_decay` must be >= 0"),
    (muon, dict(rms_rate=-0.2), r"`rms_rate`.*rms_rate=-0.2"),
    (muon, dict(adam_lr_ratio=-1), r"`adam_lr_ratio`"),
    (muon, dict(muon_a="x"), r"`muon_a` must be a finite number"),
    (muon, dict(nesterov="yes"), r"`nesterov` must be a bool"),
    (muon, dict(exclude_embeddings=None), r"`exclude_embeddings` must be a bool"),
    (muon, dict(learning_rate=-1.0), r"learning_rate"),
    (muon, dict(clipnorm=1.0, clipvalue=1.0), r"clip"),
    (muon, dict(gradient_accumulation_steps=1), r"gradient_accumulation_steps=1"),
    (schedule_free_adamw, dict(beta_1=0.0), r"`beta_1` must be in \(0, 1\].*beta_1=0.0"),
    (schedule_free_adamw, dict(beta_1=1.5), r"`beta_1`.*beta_1=1.5"),
    (schedule_free_adamw, dict(beta_2=2.0), r"`beta_2`.*beta_2=2.0"),
    (schedule_free_adamw, dict(epsilon=-1e-8), r"`epsilon`"),
    (schedule_free_adamw, dict(warmup_steps=-1), r"`warmup_steps`.*warmup_steps=-1"),
    (schedule_free_adamw, dict(warmup_steps=1.5), r"`warmup_steps`.*warmup_steps=1.5"),
    (schedule_free_adamw, dict(use_ema=True, ema_momentum=2.0), r"ema_momentum=2.0"),
    (schedule_free_adamw, dict(loss_scale_factor=0.0), r"loss_scale_factor"),
]


@pytest.mark.parametrize("factory,kwargs,match", BAD, ids=[f"{f.__name__}-{k}" for f, k, _ in BAD])
def test_bad_arguments_raise_in_both_layers(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)
    cls = Muon if factory is muon else ScheduleFreeAdamW
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_unknown_arguments_raise():
    for cls in (Muon, ScheduleFreeAdamW):
        with pytest.raises(ValueError, match="not recognized"):
            cls(lr=0.1)
    with pytest.raises(TypeError):
        muon(bogus=1)


# --------------------------------------------------------------------------------------
# exclude_layers on flax.nnx params (issue 13, item 17), ns_steps bound (issue 14, item 4)


def test_ns_steps_up_to_100_is_accepted():
    params = {"w": jnp.ones((3, 2))}
    tx = muon(0.1, ns_steps=100)
    updates, _ = tx.update({"w": jnp.ones((3, 2))}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()


def test_exclude_layers_match_the_same_params_from_nnx_split_and_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    import kopt.interop.flax as kopt_flax

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(4, 8, rngs=rngs)
            self.out = nnx.Linear(8, 2, rngs=rngs)

    model = Net(nnx.Rngs(0))
    exclude = ["^out/kernel$"]   # anchored: "out/kernel/value" would not match
    _, split_params, _ = nnx.split(model, nnx.Param, ...)
    pure = nnx.as_pure(nnx.state(model, nnx.Param))
    expected = {"hidden": {"bias": "adamw", "kernel": "muon"},
                "out": {"bias": "adamw", "kernel": "adamw"}}
    # The helper shows each leaf's branch, the same for both trees.
    assert kopt.functional.muon_branches(pure, exclude_layers=exclude) == expected
    from_split = kopt.functional.muon_branches(split_params, exclude_layers=exclude)
    assert [b for b in jax.tree.leaves(from_split)] == jax.tree.leaves(expected)

    def muon_leaves(state):   # the leaves whose `v` is empty: the Muon branch
        return [v.shape == (0,) for v in state.v.to_leaves()]

    tx = muon(0.01, exclude_layers=exclude)
    optimizer = nnx.Optimizer(model, kopt_flax.transform(tx), wrt=nnx.Param)
    through_optimizer = muon_leaves(nnx.as_pure(optimizer.opt_state))
    assert muon_leaves(tx.init(split_params)) == through_optimizer
    assert through_optimizer == [b == "muon" for b in jax.tree.leaves(expected)]


# ------------------------------------------------------------------ Muon under optax.inject_hyperparams
def _inject_params():
    return {"dense": {"kernel": jnp.linspace(0.5, 1.5, 12, dtype=jnp.float32).reshape(3, 4),
                      "bias": jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float32)}}


def _inject_grads(k):
    return jax.tree.map(lambda p: jnp.sin(p * k), _inject_params())


@pytest.mark.parametrize("hyper,new", [
    ("muon_a", 3.0), ("muon_b", -4.0), ("muon_c", 1.5), ("weight_decay", 0.1),
    ("adam_weight_decay", 0.2), ("momentum", 0.5), ("rms_rate", 0.3), ("adam_lr_ratio", 0.5),
    ("adam_beta_1", 0.5),
])
def test_muon_hyperparameters_inject_and_change_under_jit(hyper, new):
    """Every number but `ns_steps` can be injected (traced under jit); changing it between
    steps gives the step of a Muon built with the new value, without retracing."""
    params = _inject_params()
    # (optax injects an int default, adam_lr_ratio=1, as an int32: pass a float to tune it)
    floats = {"adam_lr_ratio": 1.0} if hyper == "adam_lr_ratio" else {}
    tx = optax.inject_hyperparams(muon, static_args=("ns_steps",))(learning_rate=0.1, **floats)
    state = tx.init(params)
    assert hyper in state.hyperparams and "ns_steps" not in state.hyperparams
    step = jit_max_traces(tx.update)
    _, state = step(_inject_grads(1.0), state, params)
    u_old, _ = step(_inject_grads(2.0), state, params)
    state.hyperparams[hyper] = jnp.asarray(new, state.hyperparams[hyper].dtype)
    u_new, _ = step(_inject_grads(2.0), state, params)
    u_ref, _ = muon(0.1, **{hyper: new}).update(_inject_grads(2.0), state.inner_state, params)
    for a, b in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    assert any(not np.allclose(np.asarray(a), np.asarray(o))
               for a, o in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old))), hyper


def test_muon_weight_decay_injected_as_zero_decays_nothing():
    """A traced rate cannot be read: decay always runs, by the injected rate (0 here)."""
    params = _inject_params()
    tx = optax.inject_hyperparams(muon, static_args=("ns_steps",))(
        learning_rate=0.1, weight_decay=0.0, adam_weight_decay=0.0)
    state = tx.init(params)
    u, _ = jax.jit(tx.update)(_inject_grads(1.0), state, params)
    ref = muon(0.1, weight_decay=None, adam_weight_decay=None)
    u_ref, _ = ref.update(_inject_grads(1.0), ref.init(params))
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_muon_ns_steps_is_static_and_says_how_to_inject():
    params = _inject_params()
    tx = optax.inject_hyperparams(muon)(learning_rate=0.1)   # ns_steps injected: traced
    state = tx.init(params)   # concrete at init: accepted
    with pytest.raises(ValueError, match=r"static_args=\('ns_steps',\)") as info:
        jax.jit(tx.update)(_inject_grads(1.0), state, params)
    assert "Received: ns_steps=" in str(info.value)
    fixed = optax.inject_hyperparams(muon, static_args=("ns_steps",))(learning_rate=0.1, ns_steps=2)
    u, _ = jax.jit(fixed.update)(_inject_grads(1.0), fixed.init(params), params)
    ref = muon(0.1, ns_steps=2)
    u_ref, _ = ref.update(_inject_grads(1.0), ref.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
