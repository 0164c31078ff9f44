"""Adagrad, Adamax, Adadelta, Nadam, Ftrl and Lion, in both layers.

- 20 jitted steps on the nested pytree of `test_reference` against the float64 references
  of `references_more`, with bucketing off (0) and on (65536: all but the large leaf share
  one flat buffer; 20: the scalar and the (3, 4) leaf only);
- against Keras 3's own optimizer (`stateless_apply`, jitted);
- the stateful class against the functional transform;
- `get_weights` against the legacy tf.keras layout, and `set_weights` round trips;
- a conformance pass: a quadratic decreases without recompiles, the state keeps its
  structure and dtypes, dtypes are preserved, `None` leaves and gradients are handled.
"""

from __future__ import annotations

import inspect
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf

try:  # tests/ is not a package: pytest puts it on sys.path
    import references_more as ref
    import test_conformance as conf
    import test_reference as harness
except ImportError:
    from tests import references_more as ref
    from tests import test_conformance as conf
    from tests import test_reference as harness

PARAMS, GRADS = harness.PARAMS, harness.GRADS

# --------------------------------------------------------------------------------------
# Against the float64 references. Each optimizer: its defaults, then a case with its
# hyperparameters and the cross-cutting options (a clip option, weight decay with a mask, a
# schedule or a float); Ftrl, whose rule reads the params, has one more.

CASES = [
    ("adagrad", {}),
    (
        "adagrad",
        {"schedule": (0.1, 5, 0.5), "initial_accumulator_value": 0.5, "epsilon": 1e-3, "clipnorm": 1.0,
         "weight_decay": 0.5, "mask": True},
    ),
    ("adamax", {}),
    (
        "adamax",
        {"learning_rate": 0.02, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "global_clipnorm": 20.0,
         "weight_decay": 0.5, "mask": True},
    ),
    ("adadelta", {}),
    (
        "adadelta",
        {"schedule": (2.0, 5, 0.5), "rho": 0.9, "epsilon": 1e-6, "clipvalue": 0.5, "weight_decay": 0.05,
         "mask": True},
    ),
    ("nadam", {}),
    (
        "nadam",
        {"schedule": (0.05, 5, 0.5), "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "clipvalue": 0.5,
         "weight_decay": 0.5, "mask": True},
    ),
    ("ftrl", {}),
    (
        "ftrl",
        {"learning_rate": 0.05, "learning_rate_power": -0.7, "initial_accumulator_value": 0.5,
         "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1,
         "l2_shrinkage_regularization_strength": 0.05, "beta": 0.5, "clipnorm": 1.0},
    ),
    (
        "ftrl",
        {"schedule": (0.1, 5, 0.5), "learning_rate_power": 0.0, "l1_regularization_strength": 0.02,
         "weight_decay": 0.5, "mask": True, "global_clipnorm": 20.0},
    ),
    ("lion", {}),
    (
        "lion",
        {"schedule": (0.01, 5, 0.5), "beta_1": 0.8, "beta_2": 0.95, "clipnorm": 1.0, "weight_decay": 0.5,
         "mask": True},
    ),
]
NAMES = sorted({name for name, _ in CASES})


def _case_id(case):
    name, kwargs = case
    return name + "[" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]"


# Every case with bucketing off (0) and on with 20 (two leaves bucketed, two per leaf); the
# cases with options also with 65536 (three leaves in one bucket).
REFERENCE_RUNS = [
    pytest.param(case, threshold, id=f"{_case_id(case)}-buckets={threshold}")
    for case in CASES
    for threshold in ((0, 1 << 16, 20) if case[1] else (0, 20))
]


@pytest.mark.parametrize("case,threshold", REFERENCE_RUNS)
def test_matches_float64_reference(case, threshold):
    name, kwargs = case
    kopt_kw, ref_kw = harness._translate(kwargs)
    tx = getattr(kf, name)(**kopt_kw, bucket_threshold=threshold)
    expected = getattr(ref, name)(harness._as_f64(PARAMS), [harness._as_f64(g) for g in GRADS], **ref_kw)
    harness.assert_trajectories_close(harness.run_kopt(tx), expected)


# --------------------------------------------------------------------------------------
# Against Keras 3 itself.

KERAS_CASES = [
    (
        "Adagrad",
        "adagrad",
        {"learning_rate": 0.05, "initial_accumulator_value": 0.0, "clipnorm": 1.0, "weight_decay": 0.5,
         "mask": True},
    ),
    ("Adamax", "adamax", {"schedule": (0.05, 5, 0.5), "beta_2": 0.99, "clipvalue": 0.5}),
    ("Adadelta", "adadelta", {"learning_rate": 1.0, "epsilon": 1e-6, "global_clipnorm": 20.0}),
    ("Nadam", "nadam", {"learning_rate": 0.02, "beta_1": 0.8, "weight_decay": 0.5, "mask": True}),
    ("Nadam", "nadam", {"schedule": (0.05, 5, 0.5), "clipnorm": 1.0}),
    (
        "Ftrl",
        "ftrl",
        {"learning_rate": 0.05, "learning_rate_power": -0.7, "initial_accumulator_value": 0.5,
         "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.1,
         "l2_shrinkage_regularization_strength": 0.05, "beta": 0.5, "weight_decay": 0.5, "mask": True},
    ),
    ("Lion", "lion", {"schedule": (0.01, 5, 0.5), "beta_1": 0.8, "weight_decay": 0.5, "clipnorm": 1.0}),
]


@pytest.mark.parametrize("case", KERAS_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_matches_keras(case):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    cls_name, name, kwargs = case
    kopt_kw, _ = harness._translate(kwargs)
    with jax.numpy_dtype_promotion("standard"):
        expected = harness.run_keras(keras, cls_name, kwargs)
    harness.assert_trajectories_close(harness.run_kopt(getattr(kf, name)(**kopt_kw)), expected)


def test_constructors_have_keras_arguments_and_defaults():
    """Every optimizer-specific Keras 3 argument, with its default, in both layers.

    The cross-cutting arguments (EMA, loss scaling, gradient accumulation) are not part of
    this change; `test_stateful` tracks them for every optimizer.
    """
    keras = pytest.importorskip("keras")
    later = {"use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
             "gradient_accumulation_steps"}
    problems = []
    for fn_name in NAMES:
        cls = getattr(kopt.optimizers, CLASS_NAMES[fn_name])
        theirs = inspect.signature(getattr(keras.optimizers, cls.__name__)).parameters
        for where, ours in (("class", inspect.signature(cls).parameters),
                            ("functional", inspect.signature(getattr(kf, fn_name)).parameters)):
            for arg, param in theirs.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD or arg in later:
                    continue
                if where == "functional" and arg == "name":
                    continue
                if arg not in ours:
                    problems.append(f"{where} {cls.__name__}: missing {arg}")
                elif ours[arg].default != param.default:
                    problems.append(f"{where} {cls.__name__}: {arg}={ours[arg].default!r}, "
                                    f"Keras {param.default!r}")
    assert problems == []


# --------------------------------------------------------------------------------------
# The stateful facade.

CLASS_NAMES = {"adagrad": "Adagrad", "adamax": "Adamax", "adadelta": "Adadelta", "nadam": "Nadam",
               "ftrl": "Ftrl", "lion": "Lion"}
STATEFUL_CASES = {
    "adagrad": dict(learning_rate=0.05, weight_decay=0.1, clipnorm=1.0, bucket_threshold=1 << 16),
    "adamax": dict(learning_rate=kopt.schedules.ExponentialDecay(0.05, 3, 0.5), clipvalue=0.5),
    "adadelta": dict(learning_rate=1.0, rho=0.9, global_clipnorm=5.0, bucket_threshold=20),
    "nadam": dict(learning_rate=kopt.schedules.ExponentialDecay(0.05, 3, 0.5), weight_decay=0.1,
                  bucket_threshold=1 << 16),
    "ftrl": dict(learning_rate=0.1, l1_regularization_strength=0.01, l2_regularization_strength=0.01,
                 l2_shrinkage_regularization_strength=0.01, beta=0.1, weight_decay=0.1,
                 bucket_threshold=20),
    "lion": dict(learning_rate=0.01, beta_1=0.8, weight_decay=0.1, clipnorm=1.0),
}
STATEFUL_STEPS = 6


def make_variables(params=PARAMS):
    return [kopt.Variable(np.asarray(p), name=f"leaf{i}") for i, p in enumerate(jax.tree.leaves(params))]


def run_stateful(opt, variables, grads_seq):
    out = []
    for grads in grads_seq:
        opt.apply_gradients(zip(jax.tree.leaves(grads), variables))
        out.append([np.asarray(v.value, np.float64) for v in variables])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_stateful_matches_functional(name):
    kwargs = STATEFUL_CASES[name]
    opt = getattr(kopt.optimizers, CLASS_NAMES[name])(**kwargs)
    grads_seq = GRADS[:STATEFUL_STEPS]
    actual = run_stateful(opt, make_variables(), grads_seq)
    expected = harness.run_kopt(getattr(kf, name)(**kwargs), grads_seq=grads_seq)
    for a_step, e_step in zip(actual, expected, strict=True):
        for a, e in zip(a_step, e_step, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-7, atol=1e-7)
    assert int(opt.iterations) == STATEFUL_STEPS


@pytest.mark.parametrize("name", NAMES)
def test_set_weights_resumes_exactly(name):
    cls = getattr(kopt.optimizers, CLASS_NAMES[name])
    kwargs = STATEFUL_CASES[name]
    straight_vars = make_variables()
    straight = cls(**kwargs)
    run_stateful(straight, straight_vars, GRADS[:3])
    weights = straight.get_weights()
    values = [np.array(v.value) for v in straight_vars]
    run_stateful(straight, straight_vars, GRADS[3:6])

    resumed_vars = [kopt.Variable(x, name=v.name) for x, v in zip(values, straight_vars)]
    resumed = kopt.optimizers.deserialize(kopt.optimizers.serialize(straight))
    assert type(resumed) is cls and resumed.get_config() == straight.get_config()
    resumed.build(resumed_vars)
    resumed.set_weights(weights)
    assert int(resumed.iterations) == 3
    for a, b in zip(resumed.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    run_stateful(resumed, resumed_vars, GRADS[3:6])
    for a, b in zip(resumed_vars, straight_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# get_weights against the legacy tf.keras layout (Dense(10) on 20 inputs).

LAYOUT_PATH = pathlib.Path(__file__).parent / "data" / "legacy_weight_layout.json"
LR = 0.1
LAYOUT_CASES = {
    "Adagrad": lambda: kopt.optimizers.Adagrad(LR),
    "Adadelta": lambda: kopt.optimizers.Adadelta(LR),
    "Adamax": lambda: kopt.optimizers.Adamax(LR),
    "Nadam": lambda: kopt.optimizers.Nadam(LR),
    "Ftrl": lambda: kopt.optimizers.Ftrl(LR),
}


def _first_step_entry(case, slot, g, w0):
    """The state entry after one step from the initial state, defaults but lr=LR (float64)."""
    eps = 1e-7
    if case == "Nadam" and slot == "momentum_cache":
        return np.asarray(0.9 * (1 - 0.5 * 0.96))
    if slot == "accumulator":  # Adagrad and Ftrl: 0.1 + g^2
        return 0.1 + g * g
    if slot == "accum_grad":
        return 0.05 * g * g
    if slot == "accum_var":
        delta = -np.sqrt(eps) / np.sqrt(0.05 * g * g + eps) * g
        return 0.05 * delta * delta
    if slot == "linear":
        return g - (np.sqrt(0.1 + g * g) - np.sqrt(0.1)) / LR * w0
    if slot == "m":
        return 0.1 * g
    if slot == "v" and case == "Adamax":
        return np.abs(g)
    if slot == "v":
        return 0.001 * g * g
    raise AssertionError((case, slot))


@pytest.fixture(scope="module")
def legacy_layout():
    if not LAYOUT_PATH.exists():
        pytest.skip(f"reference file {LAYOUT_PATH} is not in this checkout")
    return json.loads(LAYOUT_PATH.read_text())


def dense_variables():
    kernel = np.random.default_rng(0).standard_normal((20, 10)).astype(np.float32) * 0.1
    return [kopt.Variable(kernel, name="kernel"), kopt.Variable(np.zeros((10,), np.float32), name="bias")]


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_get_weights_matches_legacy_layout(case, legacy_layout):
    expected = legacy_layout[case]
    opt = LAYOUT_CASES[case]()
    variables = dense_variables()
    initial = {v.name: np.asarray(v.value, np.float64) for v in variables}
    rng = np.random.default_rng(1)
    grads = {"kernel": rng.normal(size=(20, 10)).astype(np.float32),
             "bias": rng.normal(size=(10,)).astype(np.float32)}
    opt.apply_gradients(zip([grads["kernel"], grads["bias"]], variables))
    weights = opt.get_weights()

    assert len(weights) == len(expected), [name for name, _ in expected]
    assert [tuple(w.shape) for w in weights] == [tuple(shape) for _, shape in expected]
    assert np.issubdtype(weights[0].dtype, np.integer) and int(weights[0]) == 1
    for (name, _), w in zip(expected[1:], weights[1:]):
        var_name, _, slot = name[: -len(":0")].rpartition("/")
        g = grads[var_name].astype(np.float64) if var_name else None
        want = _first_step_entry(case, slot, g, initial.get(var_name))
        np.testing.assert_allclose(w, want, rtol=2e-5, atol=1e-7, err_msg=name)
    # `variables` (Keras's order) holds the same arrays plus the learning rate.
    variables = opt.variables
    assert [v.name for v in variables[:2]] == ["iteration", "learning_rate"]
    assert len(variables) == len(weights) + 1
    assert sorted(np.asarray(v).tobytes() for v in variables[2:]) == sorted(
        w.tobytes() for w in weights[1:])


def test_nadam_momentum_cache_round_trips_and_is_validated():
    opt = kopt.optimizers.Nadam(0.1)
    variables = dense_variables()
    opt.build(variables)
    weights = opt.get_weights()
    assert [w.shape for w in weights[:2]] == [(), ()] and float(weights[1]) == 1.0
    weights[1] = np.asarray(0.25)
    opt.set_weights(weights)
    assert float(opt.state.momentum_cache) == 0.25 and opt.state.momentum_cache.dtype == jnp.float32
    before = opt.get_weights()
    with pytest.raises(ValueError, match=r"entry 1 \(momentum_cache\).*shape \(2,\)"):
        opt.set_weights([weights[0], np.zeros(2)] + weights[2:])
    with pytest.raises(ValueError, match=r"6 arrays.*momentum_cache"):
        opt.set_weights(weights[:1] + weights[2:])
    for a, b in zip(opt.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_ftrl_set_weights_is_variable_major():
    opt = kopt.optimizers.Ftrl(0.1)
    opt.build(dense_variables())
    weights = opt.get_weights()
    weights[3] = np.zeros((20, 10), np.float32)  # entry 3 is the bias's accumulator
    with pytest.raises(ValueError, match=r"entry 3 \(accumulator of variable 'bias'\)"):
        opt.set_weights(weights)
    weights = [weights[0], np.full((20, 10), 1.0), np.full((20, 10), 2.0), np.full(10, 3.0), np.full(10, 4.0)]
    opt.set_weights(weights)
    np.testing.assert_array_equal(opt.state.accumulator.leaf(1), np.full(10, 3.0))
    np.testing.assert_array_equal(opt.state.linear.leaf(0), np.full((20, 10), 2.0))


# --------------------------------------------------------------------------------------
# Conformance: tests/test_conformance.py runs its checks on these optimizers through
# tests/catalogue.py. What is particular to them stays here.


def test_nadam_momentum_cache_is_a_float32_scalar_for_bfloat16_params():
    tx = kf.nadam(0.1)
    params = conf.small_params(jnp.bfloat16)
    state = tx.init(params)
    _, state = tx.update(conf.random_like(params), state, params)
    assert state.momentum_cache.shape == () and state.momentum_cache.dtype == jnp.float32


def test_nadam_momentum_cache_is_the_running_product_under_vmap():
    tx = kf.nadam(0.1)
    params = {"w": jnp.ones((4, 3))}
    state = jax.vmap(tx.init)(params)
    update = jax.jit(jax.vmap(tx.update))
    for _ in range(3):
        _, state = update(conf.random_like(params), state, params)
    want = np.prod([0.9 * (1 - 0.5 * 0.96**t) for t in (1, 2, 3)])
    np.testing.assert_allclose(state.momentum_cache, np.full(4, want), rtol=1e-6)


def test_ftrl_update_without_params_is_a_clear_error():
    tx = kf.ftrl(0.1)
    params = conf.small_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(conf.random_like(params), tx.init(params))


@pytest.mark.parametrize(
    "fn,kwargs,message",
    [
        (kf.lion, {"beta_1": 0.0}, "beta_1=0.0"),
        (kf.lion, {"beta_2": 1.5}, "beta_2=1.5"),
        (kf.nadam, {"beta_1": -0.1}, "beta_1=-0.1"),
        (kf.adamax, {"beta_2": 2.0}, "beta_2=2.0"),
        (kf.adadelta, {"rho": 1.5}, "rho=1.5"),
        (kf.adagrad, {"initial_accumulator_value": -1.0}, "initial_accumulator_value=-1.0"),
        (kf.ftrl, {"learning_rate_power": 0.5}, "learning_rate_power=0.5"),
        (kf.ftrl, {"l1_regularization_strength": -1.0}, "l1_regularization_strength=-1.0"),
        (kf.ftrl, {"l2_shrinkage_regularization_strength": -1.0}, "l2_shrinkage_regularization_strength=-1.0"),
    ],
)
def test_bad_arguments_are_rejected(fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(**kwargs)
    with pytest.raises(ValueError, match=message):
        getattr(kopt.optimizers, CLASS_NAMES[fn.__name__])(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_and_registry(name):
    doc = inspect.getdoc(getattr(kf, name))
    for part in ("math::", "Args:", "Example:", "Reference"):
        assert part in doc, f"kopt.functional.{name} docstring lacks {part!r}"
    cls = getattr(kopt.optimizers, CLASS_NAMES[name])
    assert cls is getattr(kopt, cls.__name__) is getattr(kopt.stateful, cls.__name__)
    assert type(kopt.optimizers.get(name.upper())) is cls
