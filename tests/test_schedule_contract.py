"""Schedules take what users hand them, and refuse malformed configs clearly.

- #13.4: every schedule accepts, for its rates and other numeric arguments, what
  `opt.learning_rate` returns (a 0-d float32 numpy array), 0-d jax arrays and numpy/jax
  scalars; `get_config` then holds plain Python numbers, so configs stay JSON.
- #14.5: `deserialize`/`from_config` of malformed input (wrong types, unknown keys, deep
  nesting) raise ValueError or TypeError naming the offending key; they build only kopt's
  registered schedules, never import or call anything else.
- #14 "schedules that return a vector": refused when the functional update is traced.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as F
import kopt.schedules as S

EXAMPLES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5,
                              staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 50], values=[0.1, 0.05, 0.01])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=30, end_learning_rate=0.01,
                             power=0.5, cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=2.0)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=60, alpha=0.2,
                         warmup_target=0.5, warmup_steps=25)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=5, t_mul=1.5,
                                 m_mul=0.9, alpha=0.05)),
    ("Constant", dict(learning_rate=0.05)),
    ("LinearWarmup", dict(schedule=0.3, warmup_steps=7, initial_learning_rate=0.01)),
    ("WarmupCosineDecay", dict(peak_learning_rate=0.5, warmup_steps=33, decay_steps=200,
                               initial_learning_rate=0.05)),
    ("OneCycle", dict(max_learning_rate=1.0, total_steps=90, pct_start=0.45,
                      div_factor=10.0)),
    ("WarmupStableDecay", dict(peak_learning_rate=0.1, warmup_steps=5, stable_steps=40,
                               decay_steps=40, initial_learning_rate=0.01,
                               end_learning_rate=0.001)),
    ("JoinSchedules", dict(schedules=[0.1, 0.05], boundaries=[10])),
]
STEPS = jnp.arange(120)


def test_every_schedule_has_an_example():
    classes = {n for n in S.__all__ if isinstance(getattr(S, n), type)} - {"LearningRateSchedule"}
    assert classes == {name for name, _ in EXAMPLES}


WRAPPERS = {
    "opt.learning_rate": lambda v: np.asarray(v, np.float32 if isinstance(v, float) else np.int64),
    "numpy-scalar": lambda v: np.float32(v) if isinstance(v, float) else np.int32(v),
    "numpy-0d": np.asarray,
    "jax-0d": jnp.asarray,
    "jax-scalar": lambda v: jnp.float32(v) if isinstance(v, float) else jnp.int32(v),
}


def _wrap(value, wrap):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return wrap(value)
    if isinstance(value, list):
        return [_wrap(v, wrap) for v in value]
    return value


def _is_plain(value):
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return value is None or type(value) in (bool, int, float, str)


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
@pytest.mark.parametrize("name,kwargs", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_schedules_accept_numpy_and_jax_numbers(name, kwargs, wrap):
    cls = getattr(S, name)
    ref = cls(**kwargs)
    sched = cls(**{k: _wrap(v, WRAPPERS[wrap]) for k, v in kwargs.items()})
    np.testing.assert_allclose(np.asarray(jax.vmap(sched)(STEPS)),
                               np.asarray(jax.vmap(ref)(STEPS)), rtol=1e-6)
    config = sched.get_config()
    assert _is_plain(config), config
    again = S.deserialize(json.loads(json.dumps(S.serialize(sched))))
    assert again.get_config() == config


def test_polynomial_decay_of_an_optimizers_learning_rate():
    opt = kopt.optimizers.SGD(0.1)
    lr = opt.learning_rate   # a 0-d float32 numpy array
    sched = S.PolynomialDecay(lr, 4)
    assert type(sched.get_config()["initial_learning_rate"]) is float
    np.testing.assert_allclose(float(sched(0)), 0.1, rtol=1e-6)
    json.dumps(sched.get_config())
    opt2 = kopt.optimizers.SGD(learning_rate=sched)
    assert json.loads(json.dumps(opt2.get_config()))["learning_rate"] == S.serialize(sched)


@pytest.mark.parametrize("bad", [np.asarray(np.nan, np.float32), jnp.asarray(-0.1),
                                 np.float32(np.inf)], ids=["nan", "negative", "inf"])
def test_array_arguments_are_still_checked(bad):
    with pytest.raises(ValueError, match="initial_learning_rate="):
        S.PolynomialDecay(bad, 4)
    with pytest.raises(ValueError, match="initial_learning_rate="):
        S.ExponentialDecay(bad, 4, 0.5)


# ------------------------------------------------------------------ malformed configs
GOOD = {"class_name": "ExponentialDecay",
        "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}}


@pytest.mark.parametrize("config,exc,names", [
    ({"class_name": ["ExponentialDecay"], "config": GOOD["config"]}, TypeError, ["class_name"]),
    ({"class_name": {"a": 1}, "config": GOOD["config"]}, TypeError, ["class_name"]),
    ({"class_name": "ExponentialDecay", "config": "initial_learning_rate=0.1"}, TypeError,
     ["'config'"]),
    ({"class_name": "ExponentialDecay", "config": [("decay_steps", 10)]}, TypeError,
     ["'config'"]),
    ({**GOOD, "extra": 1}, ValueError, ["extra"]),
    ({"class_name": "ExponentialDecay", "config": {**GOOD["config"], "lr": 0.1}}, ValueError,
     ["lr"]),
    ({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1}}, ValueError,
     ["decay_steps", "decay_rate"]),
    ({"class_name": "ExponentialDecay", "config": {**GOOD["config"], 3: 1}}, TypeError, ["3"]),
    ({"class_name": "LinearWarmup", "config": {"warmup_steps": 3}}, ValueError, ["schedule"]),
    ({"class_name": "JoinSchedules", "config": {"schedules": "abc", "boundaries": []}},
     TypeError, ["schedules"]),
    ({"class_name": "JoinSchedules", "config": {"schedules": [{"class_name": "Nope",
                                                               "config": {}}, 0.1],
                                                "boundaries": [3]}}, ValueError, ["Nope"]),
    ("ExponentialDecay", ValueError, ["class_name"]),
    (None, ValueError, ["class_name"]),
])
def test_malformed_configs_name_the_key(config, exc, names):
    with pytest.raises(exc) as info:
        S.deserialize(config)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("cls_name,config,names", [
    ("ExponentialDecay", "decay_steps=10", ["config"]),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5,
                          "bogus": 1}, ["bogus"]),
    ("LinearWarmup", {"schedule": 0.1}, ["warmup_steps"]),
    ("JoinSchedules", {"schedules": [0.1]}, ["boundaries"]),
])
def test_from_config_names_the_key(cls_name, config, names):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(S, cls_name).from_config(config)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "eval", "exec",
                                  "keras.optimizers.schedules.ExponentialDecay",
                                  "kopt.schedules.ExponentialDecay", "__import__",
                                  "LearningRateSchedule", "subprocess.Popen"])
def test_only_registered_schedules_are_built(name, monkeypatch):
    import builtins
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError(f"deserialize imported or evaluated something: {args}")

    monkeypatch.setattr(importlib, "import_module", refuse)
    monkeypatch.setattr(builtins, "eval", refuse)
    with pytest.raises(ValueError, match="Unknown learning-rate schedule"):
        S.deserialize({"class_name": name, "config": {"command": "echo pwned"}})
    with pytest.raises(ValueError, match="Unknown learning-rate schedule"):
        S.deserialize({"class_name": name, "config": {}, "module": "os",
                       "registered_name": name})


def test_deep_nesting_is_refused_with_a_clear_error():
    config = {"class_name": "Constant", "config": {"learning_rate": 0.1}}
    for _ in range(5000):
        config = {"class_name": "LinearWarmup", "config": {"schedule": config, "warmup_steps": 1}}
    with pytest.raises(ValueError, match="nested more than"):
        S.deserialize(config)
    # ... and a deep list inside a config, and an unknown key at the top of a deep config.
    deep = [0.1]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="values"):
        S.deserialize({"class_name": "PiecewiseConstantDecay",
                       "config": {"boundaries": [1], "values": deep}})
    with pytest.raises(ValueError, match="bogus"):
        S.deserialize({**config, "bogus": 1})
    # Moderate nesting still works, and the depth counter is reset after an error.
    ok = {"class_name": "Constant", "config": {"learning_rate": 0.1}}
    for _ in range(S.base.MAX_NESTING - 1):
        ok = {"class_name": "LinearWarmup", "config": {"schedule": ok, "warmup_steps": 1}}
    assert float(S.deserialize(ok)(100)) == pytest.approx(0.1)


def test_a_schedule_returning_a_vector_is_refused_in_the_functional_layer():
    class Vector(S.LearningRateSchedule):
        def __call__(self, step):
            return jnp.full((3,), 0.1, jnp.float32)

        def get_config(self):
            return {}

    params = {"w": jnp.ones((3,), jnp.float32)}
    with pytest.raises(ValueError, match=r"must return a scalar.*shape \(3,\)"):
        F.sgd(Vector()).init(params)
