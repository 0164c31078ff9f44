"""Learning-rate schedules (SPEC section 3): Keras 3's six against Keras itself, the others
against float64 references written from their formulas, configs, jit/vmap, and changing
the rate while training without a recompile."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf
import kopt.schedules as S
from tests.helpers import jit_max_traces

STEPS = np.arange(101)
STEPS_I32 = jnp.asarray(STEPS, jnp.int32)


def values(sched, steps=STEPS_I32):
    """`sched` over `steps`, eagerly (jax caches each op, so later schedules compile little)."""
    return np.asarray(sched(steps))

# --------------------------------------------------------------------------- Keras's six

# (class name, kwargs): a grid over each schedule's arguments. Periods that divide the
# step range exercise the staircase, cycle and restart boundaries.
KERAS_GRID = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.96)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5, staircase=True)),
    ("ExponentialDecay", dict(initial_learning_rate=1.0, decay_steps=3.5, decay_rate=0.9, staircase=True)),
    ("ExponentialDecay", dict(initial_learning_rate=0.01, decay_steps=100, decay_rate=0.1)),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 50], values=[0.1, 0.05, 0.01])),
    ("PiecewiseConstantDecay", dict(boundaries=[0], values=[1.0, 0.5])),
    ("PiecewiseConstantDecay", dict(boundaries=[5, 20, 21, 99], values=[0.5, 0.4, 0.3, 0.2, 0.1])),
    ("PiecewiseConstantDecay", dict(boundaries=[10.5, 30.2], values=[0.3, 0.2, 0.1])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=50)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=30, end_learning_rate=0.01,
                             power=0.5, cycle=True)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=7, end_learning_rate=0.0,
                             power=2.0, cycle=True)),
    ("PolynomialDecay", dict(initial_learning_rate=1.0, decay_steps=200, end_learning_rate=0.1,
                             power=3.0)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=0.001,
                             cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=1.0, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=2.0, staircase=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.5, decay_steps=7, decay_rate=0.3, staircase=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=50)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=30, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=40, warmup_target=0.1, warmup_steps=10)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=60, alpha=0.2, warmup_target=0.5,
                         warmup_steps=25)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=50, warmup_target=0.2, warmup_steps=0)),
    ("CosineDecay", dict(initial_learning_rate=0.05, decay_steps=200, warmup_target=0.1,
                         warmup_steps=150)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=10)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=4)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=7, t_mul=1.0, m_mul=0.5)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=5, t_mul=1.5, m_mul=0.9,
                                 alpha=0.05)),
    ("CosineDecayRestarts", dict(initial_learning_rate=1.0, first_decay_steps=3, t_mul=3.0, alpha=0.1)),
]
KERAS_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(KERAS_GRID)]


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def keras_grid(keras):
    """Keras's schedules for KERAS_GRID and their values over STEPS, in one compile."""
    theirs = [getattr(keras.optimizers.schedules, name)(**kw) for name, kw in KERAS_GRID]
    run = jax.jit(lambda t: jnp.stack([jax.vmap(k)(t) for k in theirs]))  # vectorised under XLA
    return theirs, np.asarray(run(STEPS_I32))


@pytest.mark.parametrize("i", range(len(KERAS_GRID)), ids=KERAS_IDS)
def test_keras_schedules_match_keras(keras_grid, i):
    name, kwargs = KERAS_GRID[i]
    theirs, expected = keras_grid[0][i], keras_grid[1][i]
    got = values(getattr(S, name)(**kwargs))
    assert got.dtype == np.float32 and got.shape == STEPS.shape
    atol = 1e-6 * np.abs(expected).max()  # float32 rounding, relative to the schedule's scale
    close = np.isclose(got, expected, rtol=1e-6, atol=atol)
    # Vectorised, XLA may divide by a constant as a multiplication by its reciprocal, so
    # Keras's floor/ceil can land one step late on an exact period boundary (90 / 30 ->
    # 2.9999998). kopt corrects for that; there it must equal Keras evaluated step by step.
    for step in np.nonzero(~close)[0]:
        exact = float(theirs(jnp.asarray(step, jnp.int32)))
        np.testing.assert_allclose(got[step], exact, rtol=1e-6, atol=atol, err_msg=f"step {step}")


def test_period_boundaries_are_exact():
    # At an exact multiple of the period the staircase/cycle has moved on, on every path.
    poly = S.PolynomialDecay(0.1, decay_steps=30, end_learning_rate=0.01, cycle=True)
    stair = S.ExponentialDecay(0.1, decay_steps=30, decay_rate=0.5, staircase=True)
    restart = S.CosineDecayRestarts(0.1, first_decay_steps=41, t_mul=3.0)  # restarts at 41, 164, 533
    at = jnp.asarray([30, 60, 90, 41, 164, 533], jnp.int32)
    for fn in (lambda s: s(at), lambda s: jax.jit(jax.vmap(s))(at), lambda s: [s(int(t)) for t in at]):
        got = fn(poly)[:3], fn(stair)[:3], fn(restart)[3:]
        np.testing.assert_allclose(np.asarray(got[0], np.float32), 0.01, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(got[1], np.float32), [0.05, 0.025, 0.0125], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(got[2], np.float32), 0.1, rtol=1e-6)


# --------------------------------------------------------------------------- beyond Keras


def _cos_anneal(start, end, frac):
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))


def ref_exp(t):  # ExponentialDecay(0.1, 10, 0.5)
    return 0.1 * 0.5 ** (t / 10)


def ref_warmup(inner, warmup, lr0):
    return lambda t: lr0 + (inner(0) - lr0) * t / warmup if t < warmup else inner(t - warmup)


def ref_warmup_cosine(peak, warmup, decay, lr0=0.0, end=0.0):
    def f(t):
        if t < warmup:
            return lr0 + (peak - lr0) * t / warmup
        return _cos_anneal(peak, end, min(t - warmup, decay) / decay)
    return f


def ref_one_cycle(peak, total, pct, strategy, div, final_div):
    lo = peak / div
    fin = lo / final_div
    up = pct * total

    def anneal(a, b, f):
        return a + (b - a) * f if strategy == "linear" else _cos_anneal(a, b, f)

    return lambda t: anneal(lo, peak, t / up) if t < up else anneal(peak, fin, min((t - up) / (total - up), 1))


def ref_wsd(peak, warmup, stable, decay, lr0, end, shape):
    g = {"linear": lambda f: 1 - f, "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f)),
         "1-sqrt": lambda f: 1 - math.sqrt(f)}[shape]

    def f(t):
        if t < warmup:
            return lr0 + (peak - lr0) * t / warmup
        if t < warmup + stable:
            return peak
        return end + (peak - end) * g(min((t - warmup - stable) / decay, 1))
    return f


def ref_join(refs, bounds):
    def f(t):
        i = sum(t >= b for b in bounds)
        return refs[i](t - ([0] + bounds)[i])
    return f


BEYOND = [
    ("constant", S.Constant(0.05), lambda t: 0.05),
    ("warmup-exp", S.LinearWarmup(S.ExponentialDecay(0.1, 10, 0.5), 20),
     ref_warmup(ref_exp, 20, 0.0)),
    ("warmup-float", S.LinearWarmup(0.3, 7, initial_learning_rate=0.01), ref_warmup(lambda t: 0.3, 7, 0.01)),
    ("warmup-zero", S.LinearWarmup(S.ExponentialDecay(0.1, 10, 0.5), 0), ref_exp),
    ("warmup-cosine", S.WarmupCosineDecay(0.1, 10, 60, end_learning_rate=0.001),
     ref_warmup_cosine(0.1, 10, 60, end=0.001)),
    ("warmup-cosine-init", S.WarmupCosineDecay(0.5, 33, 200, initial_learning_rate=0.05),
     ref_warmup_cosine(0.5, 33, 200, lr0=0.05)),
    ("warmup-cosine-nowarmup", S.WarmupCosineDecay(0.1, 0, 50), ref_warmup_cosine(0.1, 0, 50)),
    ("one-cycle-cos", S.OneCycle(0.1, 80), ref_one_cycle(0.1, 80, 0.3, "cosine", 25.0, 1e4)),
    ("one-cycle-linear", S.OneCycle(1.0, 90, pct_start=0.45, anneal_strategy="linear", div_factor=10.0,
                                    final_div_factor=100.0),
     ref_one_cycle(1.0, 90, 0.45, "linear", 10.0, 100.0)),
    ("wsd-linear", S.WarmupStableDecay(0.1, 10, 50, 30), ref_wsd(0.1, 10, 50, 30, 0.0, 0.0, "linear")),
    ("wsd-cosine", S.WarmupStableDecay(0.1, 5, 40, 40, initial_learning_rate=0.01, end_learning_rate=0.001,
                                       decay_shape="cosine"),
     ref_wsd(0.1, 5, 40, 40, 0.01, 0.001, "cosine")),
    ("wsd-1-sqrt", S.WarmupStableDecay(0.2, 0, 60, 25, decay_shape="1-sqrt"),
     ref_wsd(0.2, 0, 60, 25, 0.0, 0.0, "1-sqrt")),
    ("join", S.JoinSchedules([S.LinearWarmup(0.1, 10), 0.05, S.ExponentialDecay(0.1, 10, 0.5)], [10, 40]),
     ref_join([ref_warmup(lambda t: 0.1, 10, 0.0), lambda t: 0.05, ref_exp], [10, 40])),
    ("join-piecewise", S.JoinSchedules([S.PiecewiseConstantDecay([5], [0.3, 0.2]), 0.1], [0]),
     lambda t: 0.1),
]
BEYOND_IDS = [name for name, _, _ in BEYOND]


@pytest.mark.parametrize("name,sched,ref", BEYOND, ids=BEYOND_IDS)
def test_beyond_keras_matches_float64_reference(name, sched, ref):
    got = values(sched)
    assert got.dtype == np.float32 and got.shape == STEPS.shape
    expected = np.array([ref(int(t)) for t in STEPS], np.float64)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7 * expected.max())


def test_beyond_keras_landmarks():
    # The phases meet where the docstrings say.
    wsd = S.WarmupStableDecay(1e-3, warmup_steps=100, stable_steps=800, decay_steps=100)
    assert [float(wsd(t)) for t in (0, 100, 899, 1000, 5000)] == pytest.approx([0, 1e-3, 1e-3, 0, 0])
    oc = S.OneCycle(0.1, total_steps=1000)
    assert [float(oc(t)) for t in (0, 300, 1000, 2000)] == pytest.approx([0.004, 0.1, 4e-7, 4e-7])
    wc = S.WarmupCosineDecay(0.1, warmup_steps=10, decay_steps=90, end_learning_rate=0.01)
    assert [float(wc(t)) for t in (5, 10, 55, 100, 500)] == pytest.approx([0.05, 0.1, 0.055, 0.01, 0.01])
    # WarmupCosineDecay is CosineDecay with an absolute end rate.
    kc = S.CosineDecay(0.0, 90, alpha=0.1, warmup_target=0.1, warmup_steps=10)
    np.testing.assert_allclose(values(wc), values(kc), rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- jit, vmap, dtypes

ALL = [getattr(S, name)(**kw) for name, kw in KERAS_GRID] + [s for _, s, _ in BEYOND]
ALL_IDS = KERAS_IDS + BEYOND_IDS


@pytest.fixture(scope="module")
def under_jit():
    """Every schedule in ALL on an array of steps, under vmap and on a traced scalar step,
    all in one compile."""
    run = jax.jit(lambda t: [(s(t), jax.vmap(s)(t), s(t[37])) for s in ALL])
    return run(STEPS_I32)


@pytest.mark.parametrize("i", range(len(ALL)), ids=ALL_IDS)
def test_jit_vmap_and_step_types_agree(under_jit, i):
    sched = ALL[i]
    array, mapped, scalar = under_jit[i]
    eager = values(sched)
    atol = 1e-6 * np.abs(eager).max()
    np.testing.assert_allclose(array, eager, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=atol)
    assert scalar.dtype == jnp.float32 and scalar.shape == ()
    # Eagerly, with a Python int, an int32 or a float32 step.
    for value in (scalar, sched(37), sched(jnp.asarray(37, jnp.int32)), sched(jnp.asarray(37.0, jnp.float32))):
        np.testing.assert_allclose(value, eager[37], rtol=1e-6, atol=atol)


# --------------------------------------------------------------------------- configs

NESTED = S.LinearWarmup(
    S.JoinSchedules([S.WarmupStableDecay(0.1, 5, 20, 10, decay_shape="1-sqrt"), 0.01,
                     S.CosineDecayRestarts(0.02, 7)], [35, 60]),
    warmup_steps=8, initial_learning_rate=0.001)
CONFIG_CASES = ALL + [NESTED]
CONFIG_IDS = ALL_IDS + ["nested"]


@pytest.mark.parametrize("sched", CONFIG_CASES, ids=CONFIG_IDS)
def test_config_round_trips(sched):
    config = sched.get_config()
    again = type(sched).from_config(config)
    assert again == sched and again.get_config() == config
    through_json = S.deserialize(json.loads(json.dumps(S.serialize(sched))))
    assert type(through_json) is type(sched) and through_json == sched
    np.testing.assert_array_equal(values(through_json), values(sched))
    assert hash(through_json) == hash(sched)
    assert repr(sched).startswith(type(sched).__name__ + "(")


def test_nested_config_holds_serialized_schedules():
    config = NESTED.get_config()
    inner = config["schedule"]
    assert inner["class_name"] == "JoinSchedules"
    assert [s if isinstance(s, float) else s["class_name"] for s in inner["config"]["schedules"]] == [
        "WarmupStableDecay", 0.01, "CosineDecayRestarts"]


@pytest.mark.parametrize("name,kwargs", KERAS_GRID[::3], ids=KERAS_IDS[::3])
def test_configs_interchange_with_keras(keras, name, kwargs):
    theirs = getattr(keras.optimizers.schedules, name)(**kwargs)
    ours = S.deserialize(keras.optimizers.schedules.serialize(theirs))  # with module/registered_name
    assert ours == getattr(S, name)(**kwargs)
    back = keras.optimizers.schedules.deserialize(S.serialize(ours))
    assert type(back) is type(theirs) and back.get_config() == theirs.get_config()


@pytest.mark.parametrize("sched", [S.CosineDecay(0.1, 100, warmup_target=0.2, warmup_steps=10), NESTED],
                         ids=["cosine", "nested"])
def test_schedule_inside_an_optimizer_config(sched):
    opt = kopt.optimizers.Adam(learning_rate=sched, beta_1=0.8)
    config = opt.get_config()
    assert config["learning_rate"] == S.serialize(sched)
    for cfg in (config, json.loads(json.dumps(config))):
        again = kopt.optimizers.Adam.from_config(cfg)
        assert again.get_config() == config
        assert float(again.learning_rate) == float(sched(0))
    restored = kopt.optimizers.deserialize(kopt.optimizers.serialize(opt))
    assert restored.get_config() == config


def test_optimizers_schedules_is_kopt_schedules():
    assert set(kopt.optimizers.schedules.__all__) == set(S.__all__) - {"register"}
    for name in kopt.optimizers.schedules.__all__:
        assert getattr(kopt.optimizers.schedules, name) is getattr(S, name)


@pytest.mark.parametrize("name", [n for n in S.__all__ if inspect.isclass(getattr(S, n))
                                  and getattr(S, n) is not S.LearningRateSchedule])
def test_docstrings_have_formula_args_example_reference(name):
    doc = inspect.getdoc(getattr(S, name))
    for part in ("math::", "Args:", "Example:", "Reference"):
        assert part in doc, f"kopt.schedules.{name} docstring lacks {part!r}"


# --------------------------------------------------------------------------- bad arguments

BAD = [
    (lambda: S.ExponentialDecay(0.1, 0, 0.5), "decay_steps=0"),
    (lambda: S.ExponentialDecay(-0.1, 10, 0.5), "initial_learning_rate=-0.1"),
    (lambda: S.PiecewiseConstantDecay([10, 20], [0.1, 0.2]), "boundaries=\\[10, 20\\] of length 2"),
    (lambda: S.PiecewiseConstantDecay([20, 10], [0.3, 0.2, 0.1]), "strictly increasing"),
    (lambda: S.PiecewiseConstantDecay([10], []), "values=\\[\\]"),
    (lambda: S.PolynomialDecay(0.1, -5), "decay_steps=-5"),
    (lambda: S.PolynomialDecay(0.1, 5, power=-1.0), "power=-1.0"),
    (lambda: S.InverseTimeDecay(0.1, 5, decay_rate=-0.5), "decay_rate=-0.5"),
    (lambda: S.CosineDecay(0.1, 10, alpha=1.5), "alpha=1.5"),
    (lambda: S.CosineDecay(0.1, 10, warmup_target=-1.0, warmup_steps=5), "warmup_target=-1.0"),
    (lambda: S.CosineDecayRestarts(0.1, 10, t_mul=0.0), "t_mul=0.0"),
    (lambda: S.CosineDecayRestarts(0.1, 0), "first_decay_steps=0"),
    (lambda: S.Constant(float("nan")), "learning_rate=nan"),
    (lambda: S.LinearWarmup(lambda step: 0.1, 10), "schedule=<function"),
    (lambda: S.LinearWarmup(0.1, 2.5), "warmup_steps=2.5"),
    (lambda: S.WarmupCosineDecay(0.1, 10, 0), "decay_steps=0"),
    (lambda: S.OneCycle(0.1, 100, pct_start=1.0), "pct_start=1"),
    (lambda: S.OneCycle(0.1, 100, anneal_strategy="cos"), "anneal_strategy='cos'"),
    (lambda: S.OneCycle(0.1, 0), "total_steps=0"),
    (lambda: S.WarmupStableDecay(0.1, 10, 10, 10, decay_shape="exp"), "decay_shape='exp'"),
    (lambda: S.WarmupStableDecay(0.1, -1, 10, 10), "warmup_steps=-1"),
    (lambda: S.JoinSchedules([0.1, 0.2], [10, 20]), "boundaries=\\[10, 20\\] of length 2"),
    (lambda: S.JoinSchedules([0.1, 0.2, 0.3], [20, 10]), "strictly increasing"),
    (lambda: S.JoinSchedules([0.1, "fast"], [10]), "schedules\\[1\\]='fast'"),
    (lambda: S.deserialize({"class_name": "NoSuchDecay", "config": {}}), "NoSuchDecay"),
]


@pytest.mark.parametrize("make,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_value_error_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------- changing the rate


@contextlib.contextmanager
def compile_log():
    """jax's compile log lines (`jax.log_compiles`) emitted inside the block."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling"):
                records.append(record.getMessage())

    handler, logger = Collect(level=logging.DEBUG), logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield records
    finally:
        logger.removeHandler(handler)


def _grad(values):
    return [jnp.full(v.shape, 0.5, v.dtype) for v in values]  # constant: SGD moves by -lr/2


def _sgd_run(opt, w, steps):
    """`steps` updates; returns the rate each one used, read back from plain SGD's move."""
    used = []
    grads = jax.jit(_grad)
    for _ in range(steps):
        before = np.asarray(w.value)
        opt.apply_gradients(zip(grads([w.value]), [w]))
        used.append((before - np.asarray(w.value))[0] / 0.5)
    return np.array(used)


def test_stateful_100_steps_with_a_schedule_and_a_rate_change_compile_nothing_new():
    sched = S.WarmupStableDecay(0.1, warmup_steps=10, stable_steps=50, decay_steps=40, decay_shape="cosine")
    opt = kopt.optimizers.SGD(learning_rate=sched)
    w = kopt.Variable(jnp.ones((4,), jnp.float32), name="w")
    _sgd_run(opt, w, 1)                      # compiles
    assert float(opt.learning_rate) == pytest.approx(float(sched(1)))
    with compile_log() as log:
        used = _sgd_run(opt, w, 99)
        assert float(opt.learning_rate) == pytest.approx(float(sched(100)))
    assert log == []
    assert int(opt.iterations) == 100
    # Each update used the schedule at the count before it was incremented.
    np.testing.assert_allclose(used, values(sched)[1:100], rtol=1e-5, atol=3e-7)
    if hasattr(opt._step, "_cache_size"):  # jax's private API, where present
        assert opt._step._cache_size() == 1

    # A float rate, changed while training: no recompile, and the new rate is used.
    opt2 = kopt.optimizers.SGD(learning_rate=0.1)
    w2 = kopt.Variable(jnp.ones((4,), jnp.float32), name="w2")
    _sgd_run(opt2, w2, 1)
    with compile_log() as log:
        first = _sgd_run(opt2, w2, 5)
        opt2.learning_rate = 0.02
        assert float(opt2.learning_rate) == pytest.approx(0.02)
        second = _sgd_run(opt2, w2, 5)
    assert log == []
    np.testing.assert_allclose(first, 0.1, rtol=1e-5)
    np.testing.assert_allclose(second, 0.02, rtol=1e-5)


def test_setting_a_float_on_a_schedule_optimizer_raises_type_error():
    sched = S.OneCycle(0.1, total_steps=50)
    opt = kopt.optimizers.SGD(learning_rate=sched)
    w = kopt.Variable(jnp.ones((4,), jnp.float32), name="w")
    _sgd_run(opt, w, 3)
    before = float(opt.learning_rate)
    with pytest.raises(TypeError, match="learning_rate=0.05"):
        opt.learning_rate = 0.05
    assert float(opt.learning_rate) == before
    assert opt.get_config()["learning_rate"] == S.serialize(sched)


def test_replacing_the_schedule_of_a_stateful_optimizer():
    opt = kopt.optimizers.SGD(learning_rate=S.Constant(0.1))
    w = kopt.Variable(jnp.ones((4,), jnp.float32), name="w")
    _sgd_run(opt, w, 5)
    new = S.LinearWarmup(S.CosineDecay(0.2, 20), warmup_steps=10)
    opt.learning_rate = new
    assert float(opt.learning_rate) == pytest.approx(float(new(5)))
    used = _sgd_run(opt, w, 10)
    np.testing.assert_allclose(used, values(new)[5:15], rtol=1e-5, atol=3e-7)
    assert opt.get_config()["learning_rate"] == S.serialize(new)


def test_functional_schedule_and_set_learning_rate_compile_once():
    sched = S.OneCycle(0.1, total_steps=30, anneal_strategy="linear")
    def make_step(tx):
        @jit_max_traces   # one trace per transform: a new rate or schedule step must not retrace
        def step(params, state):
            updates, state = tx.update({"w": jnp.full((3,), 0.5, jnp.float32)}, state, params)
            return kf.apply_updates(params, updates), state
        return step

    tx = kf.sgd(sched)
    step = make_step(tx)
    params = {"w": jnp.ones((3,), jnp.float32)}
    state = tx.init(params)
    for k in range(30):
        assert float(kf.current_learning_rate(state)) == pytest.approx(float(sched(k)))
        before = float(params["w"][0])
        params, state = step(params, state)
        assert (before - float(params["w"][0])) / 0.5 == pytest.approx(float(sched(k)), rel=1e-5, abs=1e-7)

    tx = kf.sgd(0.1)
    step = make_step(tx)
    state = tx.init(params)
    params, state = step(params, state)
    state = kf.set_learning_rate(state, 0.03)
    assert float(kf.current_learning_rate(state)) == pytest.approx(0.03)
    before = float(params["w"][0])
    params, state = step(params, state)
    assert (before - float(params["w"][0])) / 0.5 == pytest.approx(0.03, rel=1e-5)
