"""RAdam, AdaBelief, Adan, AdEMAMix and LARS (optimizers Keras lacks), in both layers.

- 12 jitted steps on a small nested pytree (ranks 0 to 3; one leaf large enough to stay
  out of a 64-element bucket) against the float64 references of `references_beyond`,
  with bucketing off (0) and on (64); each optimizer's defaults, then a case with its own
  arguments and the cross-cutting options (clipping, masked weight decay, schedules, loss
  scaling, gradient accumulation, EMA with overwrite);
- against optax 0.2.8 where it has the optimizer, with arguments chosen so the formulas
  coincide (see `OPTAX_NOTES`);
- the stateful class against the functional transform, `get_weights` order and
  `set_weights`/config round trips;
- a conformance pass (a quadratic under jit without recompiles, stable state structure,
  dtypes, `None` leaves) and bad arguments.
"""

from __future__ import annotations

import inspect
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf
from kopt.functional.adabelief import adabelief
from kopt.functional.adan import adan
from kopt.functional.ademamix import ademamix
from kopt.functional.lars import lars
from kopt.functional.radam import radam
from kopt.stateful.adabelief import AdaBelief
from kopt.stateful.adan import Adan
from kopt.stateful.ademamix import AdEMAMix
from kopt.stateful.lars import LARS
from kopt.stateful.radam import RAdam
from tests.helpers import assert_trees_close

try:  # tests/ is not a package: pytest puts it on sys.path
    import references as base_ref
    import references_beyond as ref
    import test_conformance as conf
    import test_reference as harness
except ImportError:
    from tests import references as base_ref
    from tests import references_beyond as ref
    from tests import test_conformance as conf
    from tests import test_reference as harness

FUNCTIONS = {"radam": radam, "adabelief": adabelief, "adan": adan, "ademamix": ademamix, "lars": lars}
CLASSES = {"radam": RAdam, "adabelief": AdaBelief, "adan": Adan, "ademamix": AdEMAMix, "lars": LARS}
NAMES = sorted(FUNCTIONS)
NUM_STEPS = 12


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
    return {"dense": [f(3, 4), f(4), f()], "conv": (f(2, 3, 5), f(40, 30))}


# Per-leaf gradient scales, in flatten order (conv[0], conv[1], dense[0], dense[1],
# dense[2]): clipnorm=1 clips some leaves and not others.
GRAD_SCALES = [1.0, 0.05, 2.0, 0.3, 0.5]


def make_grads(params, num_steps=NUM_STEPS, seed=1):
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    return [
        treedef.unflatten([jnp.asarray((s * rng.normal(size=np.shape(p))).astype(np.float32))
                           for p, s in zip(leaves, GRAD_SCALES)])
        for _ in range(num_steps)
    ]


PARAMS = make_params()
GRADS = make_grads(PARAMS)
# Leaves with weight decay, and (LARS) with a trust ratio.
DECAY_MASK = {"dense": [True, False, False], "conv": (True, True)}
TRUST_MASK = {"dense": [True, True, False], "conv": (False, True)}
THRESHOLDS = (0, 64)   # 64: every leaf but the (40, 30) one shares a bucket


def run_kopt(tx, params=PARAMS, grads_seq=GRADS):
    return harness.run_kopt(tx, params=params, grads_seq=grads_seq)


def assert_close(actual, expected, **kw):
    harness.assert_trajectories_close(actual, expected, start=PARAMS, **kw)


def _translate(kwargs):
    """A case's kwargs for kopt and for the reference: `schedule=(lr0, steps, rate)` is an
    ExponentialDecay, `mask=True` the weight-decay mask, `trust_mask=True` LARS's."""
    kopt_kw, ref_kw = dict(kwargs), dict(kwargs)
    if "schedule" in kwargs:
        lr0, steps, rate = kopt_kw.pop("schedule")
        ref_kw.pop("schedule")
        kopt_kw["learning_rate"] = kopt.schedules.ExponentialDecay(lr0, steps, rate)
        ref_kw["learning_rate"] = base_ref.exponential_decay(lr0, steps, rate)
    for key, arg, mask in (("mask", "weight_decay_mask", DECAY_MASK),
                           ("trust_mask", "trust_ratio_mask", TRUST_MASK)):
        if kwargs.get(key):
            kopt_kw.pop(key)
            ref_kw.pop(key)
            kopt_kw[arg] = mask
            ref_kw[arg] = jax.tree.leaves(mask)
    return kopt_kw, ref_kw


# --------------------------------------------------------------------------------------
# Against the float64 references.

CASES = [
    ("radam", {}),   # beta_2=0.999: rho_5 = 4.996 < 5 <= rho_6, the switch at t = 6
    ("radam", {"schedule": (0.01, 4, 0.5), "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6,
               "threshold": 6.0, "clipnorm": 1.0, "weight_decay": 0.1, "mask": True}),
    ("adabelief", {}),
    ("adabelief", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-8,
                   "global_clipnorm": 2.0, "weight_decay": 0.1, "mask": True,
                   "loss_scale_factor": 8.0}),
    ("adan", {}),
    ("adan", {"schedule": (0.01, 4, 0.5), "beta_1": 0.9, "beta_2": 0.8, "beta_3": 0.95,
              "epsilon": 1e-6, "clipvalue": 0.5, "weight_decay": 0.1, "mask": True,
              "gradient_accumulation_steps": 2}),
    ("ademamix", {}),
    ("ademamix", {"learning_rate": 0.01, "beta_3": 0.999, "alpha": 8.0, "alpha_warmup_steps": 6,
                  "beta_3_warmup_steps": 8, "clipnorm": 1.0, "weight_decay": 0.1, "mask": True,
                  "use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 4}),
    ("lars", {}),
    ("lars", {"schedule": (0.5, 4, 0.5), "momentum": 0.8, "nesterov": True, "trust_coefficient": 0.01,
              "coupled_weight_decay": 0.01, "epsilon": 1e-6, "trust_mask": True, "mask": True,
              "weight_decay": 0.01, "clipnorm": 1.0}),
    ("lars", {"learning_rate": 0.5, "momentum": 0.0, "coupled_weight_decay": 0.05,
              "gradient_accumulation_steps": 3}),
    # EMA and accumulation together: the EMA moves on every call, as in Keras 3.
    ("adabelief", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9,
                   "ema_overwrite_frequency": 3, "gradient_accumulation_steps": 2}),
]


def _case_id(case):
    name, kwargs = case
    return name + "[" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]"


# Every case with bucketing off and on, except LARS's options cases: LARS never buckets
# (its default case checks that a positive threshold changes nothing).
REFERENCE_RUNS = [
    pytest.param(case, threshold, id=f"{_case_id(case)}-buckets={threshold}")
    for case in CASES
    for threshold in ((0,) if case[0] == "lars" and case[1] else THRESHOLDS)
]


@pytest.mark.parametrize("case,threshold", REFERENCE_RUNS)
def test_matches_float64_reference(case, threshold):
    name, kwargs = case
    kopt_kw, ref_kw = _translate(kwargs)
    tx = FUNCTIONS[name](**kopt_kw, bucket_threshold=threshold)
    expected = getattr(ref, name)(harness._as_f64(PARAMS), [harness._as_f64(g) for g in GRADS], **ref_kw)
    actual = run_kopt(tx)
    assert_close(actual, expected)
    assert not np.allclose(actual[-1][0], harness._as_f64(PARAMS)[0])   # it moved


@pytest.mark.parametrize("frequency", [3, 5], ids=["overwrite-3", "overwrite-5"])
def test_reference_loops_follow_keras_with_ema_and_accumulation(frequency):
    """Keras 3's SGD with EMA and gradient accumulation together, call by call, against
    the float64 reference loop of every reference (references.keras_loop, around the plain
    SGD rule) and against kopt's SGD."""
    keras = pytest.importorskip("keras")
    options = dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=frequency,
                   gradient_accumulation_steps=2)
    lr, params, grads_seq = 0.1, harness._as_f64(PARAMS), [harness._as_f64(g) for g in GRADS]

    k_opt = keras.optimizers.SGD(learning_rate=lr, **options)
    k_vars = [keras.Variable(np.asarray(p, np.float32), dtype="float32") for p in params]
    o_opt = kopt.optimizers.SGD(learning_rate=lr, **options)
    o_vars = [kopt.Variable(np.asarray(p, np.float32)) for p in params]
    keras_run, kopt_run = [], []
    with jax.numpy_dtype_promotion("standard"):   # Keras mixes int32 counters and floats
        for grads in grads_seq:
            k_opt.apply([jnp.asarray(g, jnp.float32) for g in grads], k_vars)
            o_opt.apply([jnp.asarray(g, jnp.float32) for g in grads], o_vars)
            keras_run.append([np.asarray(v.value, np.float64) for v in k_vars])
            kopt_run.append([np.asarray(v.value, np.float64) for v in o_vars])

    loop = base_ref.keras_loop(params, grads_seq, lr,
                               lambda w, g, lr, t: [x - lr * y for x, y in zip(w, g)],
                               **options)
    for name, run in (("references.keras_loop", loop), ("kopt", kopt_run)):
        for call, (got, want) in enumerate(zip(run, keras_run)):
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name} vs Keras after call {call}")


# --------------------------------------------------------------------------------------
# Against optax 0.2.8.

OPTAX_NOTES = """
- radam: optax computes rho_t from float32(beta_2); at beta_2 = 0.999 that is ~0.04 low
  (the rectification factor ~1% off), so the comparison uses beta_2 = 0.9, where the
  float32 error is ~1e-5. Epsilon: both add it to the bias-corrected root (eps_root=0).
- adabelief: the one `epsilon` is optax's `eps` and `eps_root`.
- adan: optax weights the gradient difference by 1 - b2 instead of b2 (optax #1715); the
  two agree at beta_2 = 0.5. optax's eps_root (default 1e-8) is set to 0.
- ademamix (optax.contrib): optax's schedules for b3 and alpha are called with the count
  before the update, kopt's warmups use t = count + 1, so optax gets `c -> f(c + 1)`.
- lars: coupled_weight_decay is optax's weight_decay; the masks are the same trees.
"""


def _optax_cases():
    optax = pytest.importorskip("optax")

    def b3_warmup(c):   # the paper's beta_3 scheduler, with T = 8, from beta_1 = 0.9 to 0.999
        a = jnp.minimum((c + 1) / 8, 1.0)
        l1, l3 = np.log(0.9), np.log(0.999)
        return jnp.minimum(jnp.exp(l1 * l3 / ((1 - a) * l3 + a * l1)), 0.999)

    return {
        "radam": (radam(0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-6),
                  optax.radam(0.01, b1=0.8, b2=0.9, eps=1e-6, eps_root=0.0, threshold=5.0)),
        "adabelief": (adabelief(0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-8),
                      optax.adabelief(0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-8)),
        "adan": (adan(0.01, beta_1=0.9, beta_2=0.5, beta_3=0.95, epsilon=1e-6, weight_decay=0.1),
                 optax.adan(0.01, b1=0.9, b2=0.5, b3=0.95, eps=1e-6, eps_root=0.0, weight_decay=0.1)),
        "ademamix": (
            ademamix(0.01, beta_3=0.999, alpha=8.0, alpha_warmup_steps=6, beta_3_warmup_steps=8,
                     weight_decay=0.1),
            optax.contrib.ademamix(0.01, b1=0.9, b2=0.999, b3=b3_warmup,
                                   alpha=lambda c: 8.0 * jnp.minimum((c + 1) / 6, 1.0),
                                   eps=1e-8, eps_root=0.0, weight_decay=0.1),
        ),
        "lars": (
            lars(0.5, momentum=0.8, nesterov=True, trust_coefficient=0.01, coupled_weight_decay=0.01,
                 epsilon=1e-6, trust_ratio_mask=TRUST_MASK, weight_decay_mask=DECAY_MASK),
            optax.lars(0.5, weight_decay=0.01, weight_decay_mask=DECAY_MASK, trust_coefficient=0.01,
                       eps=1e-6, trust_ratio_mask=TRUST_MASK, momentum=0.8, nesterov=True),
        ),
    }


@pytest.mark.parametrize("name", NAMES)
def test_matches_optax(name):
    ours, theirs = _optax_cases()[name]
    with jax.numpy_dtype_promotion("standard"):   # optax mixes int32 counts and floats
        expected = run_kopt(theirs)
    assert_close(run_kopt(ours), expected)


# --------------------------------------------------------------------------------------
# The stateful facade.

STATEFUL_CASES = {
    "radam": dict(learning_rate=0.01, weight_decay=0.1, clipnorm=1.0, bucket_threshold=64),
    "adabelief": dict(learning_rate=kopt.schedules.ExponentialDecay(0.01, 3, 0.5), epsilon=1e-8),
    "adan": dict(learning_rate=0.01, beta_2=0.8, weight_decay=0.1, bucket_threshold=64),
    "ademamix": dict(learning_rate=0.01, alpha_warmup_steps=4, beta_3_warmup_steps=4, global_clipnorm=2.0),
    "lars": dict(learning_rate=0.5, coupled_weight_decay=0.01, nesterov=True),
}
SLOTS = {"radam": ["m", "v"], "adabelief": ["m", "s"], "adan": ["m", "v", "n", "prev_grad"],
         "ademamix": ["m1", "m2", "nu"], "lars": ["momentum"]}
STATEFUL_STEPS = 6
VAR_NAMES = ["conv_kernel", "conv_big_kernel", "dense_kernel", "dense_bias", "scale"]


def make_variables():
    return [kopt.Variable(np.asarray(p), name=n) for p, n in zip(jax.tree.leaves(PARAMS), VAR_NAMES)]


def run_stateful(opt, variables, grads_seq):
    out = []
    for grads in grads_seq:
        opt.apply_gradients(zip(jax.tree.leaves(grads), variables))
        out.append([np.asarray(v.value, np.float64) for v in variables])
    return out


def _check_same(actual, expected):
    assert_trees_close(actual, expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_stateful_matches_functional_and_round_trips(name):
    cls, kwargs = CLASSES[name], STATEFUL_CASES[name]
    opt = cls(**kwargs)
    variables = make_variables()
    grads_seq = [tuple(jax.tree.leaves(g)) for g in GRADS[:STATEFUL_STEPS]]
    params = tuple(jax.tree.leaves(PARAMS))   # the variables' buffers are donated
    actual = run_stateful(opt, variables, grads_seq)
    _check_same(actual, harness.run_kopt(FUNCTIONS[name](**kwargs), params=params, grads_seq=grads_seq))
    assert int(opt.iterations) == STATEFUL_STEPS

    # get_weights: the count, then slot by slot in the documented order.
    weights = opt.get_weights()
    assert len(weights) == 1 + len(SLOTS[name]) * len(variables)
    assert int(weights[0]) == STATEFUL_STEPS
    for k, slot in enumerate(SLOTS[name]):
        for j, v in enumerate(variables):
            got = weights[1 + k * len(variables) + j]
            np.testing.assert_array_equal(got, np.asarray(getattr(opt.state, slot).leaf(j)))
            assert got.shape == v.shape

    # Config and weights round trip into a fresh optimizer.
    fresh = cls.from_config(opt.get_config())
    assert fresh.get_config() == opt.get_config()
    fresh.build(make_variables())
    fresh.set_weights(weights)
    for a, b in zip(fresh.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stateful_lars_exclusions_and_pickling():
    """Name-based exclusions become the functional masks, and survive pickling."""
    kwargs = dict(learning_rate=0.5, momentum=0.8, coupled_weight_decay=0.01, weight_decay=0.01)
    opt = LARS(**kwargs, exclude_from_layer_adaptation=["bias", "^scale$"])
    opt.exclude_from_weight_decay(var_names=["bias", "scale"])
    variables = make_variables()
    grads_seq = [tuple(jax.tree.leaves(g)) for g in GRADS[:STATEFUL_STEPS]]
    adapt = tuple("bias" not in n and n != "scale" for n in VAR_NAMES)
    tx = lars(**kwargs, trust_ratio_mask=adapt, weight_decay_mask=adapt)
    expected = harness.run_kopt(tx, params=tuple(jax.tree.leaves(PARAMS)), grads_seq=grads_seq)
    actual = run_stateful(opt, variables, grads_seq[:3])
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.get_config() == opt.get_config()
    actual += run_stateful(restored, restored._vars, grads_seq[3:])
    _check_same(actual, expected)


# --------------------------------------------------------------------------------------
# Conformance.

# The quadratic, dtype and bucket checks of tests/test_conformance.py run on these
# optimizers through tests/catalogue.py; the None-leaf layout check stays here.


@pytest.mark.parametrize("threshold", THRESHOLDS, ids=lambda n: f"buckets={n}")
@pytest.mark.parametrize("name", NAMES)
def test_state_structure_dtypes_and_none_leaves(name, threshold):
    tx = FUNCTIONS[name](bucket_threshold=threshold)
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((3,), jnp.bfloat16), "s": jnp.ones(()), "n": None}
    grads = {**conf.random_like({k: v for k, v in params.items() if v is not None}), "n": None}
    state = tx.init(params)
    out = jax.eval_shape(
        lambda s: jax.lax.cond(True, lambda s: tx.update(grads, s, params)[1], lambda s: s, s), state)
    assert conf.state_signature(out) == conf.state_signature(state)

    if threshold:   # the rest runs eagerly (slow to dispatch): once per optimizer
        return
    updates, state = tx.update(grads, state, params)
    assert updates["b"].dtype == jnp.bfloat16 and updates["n"] is None
    assert all(bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))) for u in jax.tree.leaves(updates))
    for slot in conf.packed_fields(state).values():
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(slot))
    params = kf.apply_updates(params, updates)

    updates, new_state = tx.update({**grads, "b": None}, state, params)   # "b" is leaf 0
    assert updates["b"] is None
    for field, slot in conf.packed_fields(state).items():
        np.testing.assert_array_equal(getattr(new_state, field).leaf(0), slot.leaf(0), err_msg=field)


def test_lars_masks_may_be_callables_and_are_checked():
    params = conf.small_params()   # {"w": (3, 2), "b": ((2,), ())}
    grads = conf.random_like(params)
    by_tree = lars(coupled_weight_decay=0.1, trust_ratio_mask={"w": True, "b": (False, True)},
                   weight_decay_mask={"w": False, "b": (True, False)})
    by_callable = lars(coupled_weight_decay=0.1,
                       trust_ratio_mask=lambda p: {"w": True, "b": (False, True)},
                       weight_decay_mask=lambda p: {"w": p["w"].ndim < 2, "b": (True, False)})
    expected, _ = by_tree.update(grads, by_tree.init(params), params)
    actual, _ = by_callable.update(grads, by_callable.init(params), params)
    conf.assert_trees_close(actual, expected, rtol=0, atol=0)
    unmasked, _ = lars(coupled_weight_decay=0.1).update(grads, by_tree.init(params), params)
    assert not np.allclose(unmasked["b"][0], expected["b"][0])

    tx = lars(trust_ratio_mask={"w": True})
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, state)
    with pytest.raises(ValueError, match="trust_ratio_mask must have the structure"):
        tx.update(grads, state, params)


# --------------------------------------------------------------------------------------
# Bad arguments, in both layers.

@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("radam", {"beta_1": 1.5}, "beta_1=1.5"),
        ("radam", {"beta_2": 1.0}, "beta_2=1.0"),
        ("radam", {"epsilon": -1e-8}, "epsilon=-1e-08"),
        ("radam", {"threshold": 3.0}, "threshold=3.0"),
        ("adabelief", {"beta_2": -0.1}, "beta_2=-0.1"),
        ("adabelief", {"epsilon": -1.0}, "epsilon=-1.0"),
        ("adan", {"beta_3": 1.2}, "beta_3=1.2"),
        ("ademamix", {"alpha": -1.0}, "alpha=-1.0"),
        ("ademamix", {"beta_3": 2.0}, "beta_3=2.0"),
        ("ademamix", {"alpha_warmup_steps": 0}, "alpha_warmup_steps=0"),
        ("ademamix", {"beta_3_warmup_steps": 2.5}, "beta_3_warmup_steps=2.5"),
        ("ademamix", {"beta_3_warmup_steps": 10, "beta_3": 1.0}, "beta_3=1.0"),
        ("lars", {"momentum": 1.5}, "momentum=1.5"),
        ("lars", {"trust_coefficient": 0.0}, "trust_coefficient=0.0"),
        ("lars", {"coupled_weight_decay": -0.1}, "coupled_weight_decay=-0.1"),
        ("lars", {"learning_rate": -1.0}, "learning_rate=-1.0"),
        ("lars", {"clipnorm": 1.0, "clipvalue": 1.0}, "clip"),
    ],
)
def test_bad_arguments_are_rejected(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[name](**kwargs)
    with pytest.raises(ValueError, match=message):
        CLASSES[name](**kwargs)


def test_bad_layer_adaptation_patterns_are_rejected():
    with pytest.raises(ValueError, match="exclude_from_layer_adaptation='bias'"):
        LARS(exclude_from_layer_adaptation="bias")
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        RAdam(rho=5)


@pytest.mark.parametrize("name", NAMES)
def test_docstrings(name):
    doc = inspect.getdoc(FUNCTIONS[name])
    for part in ("math::", "Args:", "Example:", "Reference", "State:"):
        assert part in doc, f"{name} docstring lacks {part!r}"
    assert "get_weights()` order" in inspect.getdoc(CLASSES[name])
    # The class has the function's optimizer-specific arguments, with the same defaults
    # (LARS's name patterns stand in for its functional mask).
    fn_params = inspect.signature(FUNCTIONS[name]).parameters
    cls_params = inspect.signature(CLASSES[name]).parameters
    for arg, p in fn_params.items():
        if arg in ("weight_decay_mask", "trust_ratio_mask"):
            continue
        assert arg in cls_params and cls_params[arg].default == p.default, (name, arg)
