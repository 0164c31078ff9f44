"""Exact resume and persistence (issue #8 section 4), for every registered optimizer.

- `pickle` round-trips a stateful optimizer together with its Variables: the copy holds
  the same config, state and weight-decay mask, and continues bit-for-bit;
- `get_weights` -> `set_weights` into a freshly built optimizer (from the config) also
  continues bit-for-bit;
- configs round-trip exactly (through JSON and pickle) for every optimizer, with every
  cross-cutting option set, and for every schedule, alone and inside an optimizer.

`LossScaleOptimizer` is included throughout, with non-finite gradients in the sequence.
"""

from __future__ import annotations

import inspect
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.schedules as S
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from tests.catalogue import CATALOGUE
from tests.helpers import jit_max_traces

SHAPES = {"kernel": (4, 3), "bias": (3,)}


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [kopt.Variable(rng.standard_normal(s).astype(np.float32), name=n)
            for n, s in SHAPES.items()]


def _grads(steps, seed=1, nonfinite_at=()):
    rng = np.random.default_rng(seed)
    seq = [[(0.5 * rng.standard_normal(s)).astype(np.float32) for s in SHAPES.values()]
           for _ in range(steps)]
    for t in nonfinite_at:
        seq[t][0][0, 0] = np.inf
    return seq


def _random_state(opt, variables, seed=2):
    """Build without compiling anything and load non-trivial weights."""
    rng = np.random.default_rng(seed)
    opt.build(variables)
    weights = [np.array(5, w.dtype) if np.issubdtype(w.dtype, np.integer)
               else (np.abs(rng.standard_normal(w.shape)) + 0.5).astype(w.dtype)
               for w in opt.get_weights()]
    opt.set_weights(weights)


def _assert_same_state(a, b):
    """Same state pytree (structure, static layout, dtypes and bits), config and mask."""
    assert jax.tree.structure(a.state) == jax.tree.structure(b.state)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.get_config() == b.get_config()
    assert getattr(a, "_mask", None) == getattr(b, "_mask", None)
    assert float(a.learning_rate) == float(b.learning_rate)


def _rich(cls):
    """`cls` with a schedule and the cross-cutting options' state (EMA, accumulation)."""
    return cls(learning_rate=S.ExponentialDecay(0.05, 2, 0.7), use_ema=True,
               ema_overwrite_frequency=3, gradient_accumulation_steps=2)


def _lso():
    inner = kopt.optimizers.Adam(learning_rate=0.05, weight_decay=0.1)
    inner.exclude_from_weight_decay(var_names=["bias"])   # the mask must survive pickling
    return LossScaleOptimizer(inner, initial_scale=4.0, dynamic_growth_steps=2)


EVERY = {e.name: (lambda cls=e.cls: _rich(cls)) for e in CATALOGUE}
EVERY["loss_scale_optimizer"] = _lso


def _fresh_from(opt, variables):
    """A new optimizer from `opt`'s config, built on copies of `variables`, loaded with
    `opt.get_weights()`. Weight-decay exclusions are not part of a config (as in Keras),
    so they are made again."""
    fresh_vars = [kopt.Variable(v.numpy(), name=v.name) for v in variables]
    fresh = type(opt).from_config(json.loads(json.dumps(opt.get_config())))
    if isinstance(opt, LossScaleOptimizer):
        fresh.exclude_from_weight_decay(var_names=["bias"])
    fresh.build(fresh_vars)
    fresh.set_weights(opt.get_weights())
    return fresh, fresh_vars


@pytest.mark.parametrize("name", sorted(EVERY))
def test_pickle_and_set_weights_restore_the_exact_state(name):
    """Every optimizer, no step compiled: both restores give the same state pytree."""
    variables = _variables()
    opt = EVERY[name]()
    _random_state(opt, variables)
    pickled_vars, pickled = pickle.loads(pickle.dumps((variables, opt)))
    fresh, _ = _fresh_from(opt, variables)
    for clone in (pickled, fresh):
        _assert_same_state(clone, opt)
        assert int(clone.iterations) == 5
    for a, b in zip(pickled_vars, variables):
        assert a is not b and a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert all(a is b for a, b in zip(pickled._vars, pickled_vars))   # still built with them


RESUME = {
    "adam_accumulation_buckets": lambda: kopt.optimizers.Adam(
        S.ExponentialDecay(0.05, 2, 0.7), gradient_accumulation_steps=2, bucket_threshold=1 << 16),
    "loss_scale_optimizer": _lso,
}


def _run(opt, variables, grads_seq):
    for grads in grads_seq:
        opt.apply_gradients(zip(grads, variables))


@pytest.mark.parametrize("name", sorted(RESUME))
def test_pickle_and_set_weights_continue_bit_for_bit(name):
    """The restored copies continue exactly as the uninterrupted run: a bucketed Adam
    mid-accumulation with a schedule, and the loss-scale wrapper across a non-finite step
    (every other layout is restored exactly by the test above)."""
    grads = _grads(7, nonfinite_at=(4,) if name == "loss_scale_optimizer" else ())
    straight_vars = _variables()
    straight = RESUME[name]()
    _run(straight, straight_vars, grads[:3])

    blob = pickle.dumps((straight_vars, straight))   # checkpoints after 3 steps
    fresh, fresh_vars = _fresh_from(straight, straight_vars)
    _run(straight, straight_vars, grads[3:])   # the uninterrupted run
    pickled_vars, pickled = pickle.loads(blob)
    _run(pickled, pickled_vars, grads[3:])
    _run(fresh, fresh_vars, grads[3:])

    for clone, clone_vars in ((pickled, pickled_vars), (fresh, fresh_vars)):
        _assert_same_state(clone, straight)
        for a, b in zip(clone_vars, straight_vars):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    if name == "loss_scale_optimizer":
        assert float(pickled.dynamic_scale) == float(fresh.dynamic_scale) == 16.0
        assert int(straight.iterations) == 6   # the non-finite step was skipped


def test_pickled_functional_state_continues_bit_for_bit():
    tx = kopt.functional.nadam(S.CosineDecay(0.05, 10), gradient_accumulation_steps=2)
    params = {"w": np.ones((3, 2), np.float32), "b": np.zeros((2,), np.float32)}
    state = tx.init(params)
    step = jit_max_traces(tx.update)   # the restored state must not retrace
    grads = [{"w": g[0][:3, :2], "b": g[1][:2]} for g in _grads(5)]
    for g in grads[:3]:
        _, state = step(g, state, params)
    restored = jax.tree.map(jnp.asarray, pickle.loads(pickle.dumps(jax.device_get(state))))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for g in grads[3:]:
        u1, state = step(g, state, params)
        u2, restored = step(g, restored, params)
        for a, b in zip(jax.tree.leaves((u1, state)), jax.tree.leaves((u2, restored))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- configs

SCHEDULES = [
    S.ExponentialDecay(0.1, 10, 0.5, staircase=True),
    S.PiecewiseConstantDecay([5, 10], [0.1, 0.05, 0.01]),
    S.PolynomialDecay(0.1, 20, end_learning_rate=0.001, power=2.0, cycle=True),
    S.InverseTimeDecay(0.1, 5, 0.3),
    S.CosineDecay(0.1, 100, alpha=0.1, warmup_target=0.2, warmup_steps=10),
    S.CosineDecayRestarts(0.1, 10, t_mul=1.5, m_mul=0.9, alpha=0.01),
    S.Constant(0.02),
    S.LinearWarmup(S.ExponentialDecay(0.1, 10, 0.5), 5, initial_learning_rate=0.01),
    S.WarmupCosineDecay(0.1, 5, 50, initial_learning_rate=0.01, end_learning_rate=0.001),
    S.OneCycle(0.1, 100, pct_start=0.2, anneal_strategy="linear"),
    S.WarmupStableDecay(0.1, 5, 20, 10, decay_shape="1-sqrt"),
    S.JoinSchedules([S.Constant(0.1), 0.05, S.CosineDecay(0.05, 10)], [5, 15]),
]


def test_every_schedule_class_is_in_the_list():
    classes = {getattr(S, n) for n in S.__all__}
    classes = {c for c in classes if isinstance(c, type) and issubclass(c, S.LearningRateSchedule)
               and c is not S.LearningRateSchedule}
    assert classes == {type(s) for s in SCHEDULES}


@pytest.mark.parametrize("sched", SCHEDULES, ids=[type(s).__name__ for s in SCHEDULES])
def test_schedule_pickles_and_round_trips_inside_an_optimizer(sched):
    again = pickle.loads(pickle.dumps(sched))
    assert again == sched and again.get_config() == sched.get_config()
    assert float(again(7)) == float(sched(7))

    opt = kopt.optimizers.SGD(learning_rate=sched, momentum=0.5)
    config = opt.get_config()
    for cfg in (config, json.loads(json.dumps(config)), pickle.loads(pickle.dumps(opt)).get_config()):
        clone = kopt.optimizers.SGD.from_config(cfg)
        assert clone.get_config() == config and clone._learning_rate == sched


def _every_option(cls):
    """Every constructor argument away from its default where there is an obvious other
    value (booleans flipped), and every cross-cutting option set."""
    kwargs = dict(learning_rate=S.WarmupCosineDecay(0.01, 3, 30), clipnorm=0.5,
                  use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5,
                  loss_scale_factor=128.0, gradient_accumulation_steps=4, weight_decay=0.004,
                  name="custom", bucket_threshold=1024)
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if isinstance(p.default, bool) and name not in kwargs:
            kwargs[name] = not p.default
    return kwargs


CONFIG_CASES = {e.name: (lambda cls=e.cls: cls(**_every_option(cls))) for e in CATALOGUE}
CONFIG_CASES["loss_scale_optimizer"] = lambda: LossScaleOptimizer(
    kopt.optimizers.Nadam(**_every_option(kopt.optimizers.Nadam)), initial_scale=1024.0,
    dynamic_growth_steps=50, name="lso")


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_config_round_trips_exactly(name):
    opt = CONFIG_CASES[name]()
    config = opt.get_config()
    params = set(inspect.signature(type(opt).__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)

    through_json = json.loads(json.dumps(config))
    clone = type(opt).from_config(through_json)
    assert type(clone) is type(opt) and clone.get_config() == config
    assert through_json == json.loads(json.dumps(config))   # from_config did not mutate it
    assert pickle.loads(pickle.dumps(opt)).get_config() == config
    data = json.loads(json.dumps(kopt.optimizers.serialize(opt)))
    assert data["class_name"] == type(opt).__name__ and data["config"] == config
    if isinstance(opt, LossScaleOptimizer):   # a wrapper: not looked up by name
        restored = LossScaleOptimizer.from_config(data["config"])
    else:
        restored = kopt.optimizers.deserialize(data)
    assert restored.get_config() == config
