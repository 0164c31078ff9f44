"""optax's contract for gradient transformations, checked on every kopt factory.

- #13.11: `update(grads, state, params, **extra_args)` accepts and ignores extra keyword
  arguments (optax's `GradientTransformationExtraArgs`); `chain` and the other wrappers
  pass them on to inner transforms that take them.
- #13.12: `optax.inject_hyperparams(factory)(learning_rate=...)` works for every
  optimizer: init, a jitted update, and changing `state.hyperparams['learning_rate']`
  changes the step.
- #13.15: `set_learning_rate` on a state whose rate comes from a schedule (or from an
  injected array) is refused instead of being overwritten by the next step.
- #13.5: a zero-argument callable learning rate works everywhere; a callable of the
  wrong arity is refused at construction; a schedule must return a scalar.
- #13.14: optax's alias convergence test (parabola and Rosenbrock, 10,000 jitted steps,
  rtol = atol = 3e-2) for every optimizer, with no recompilation after the first call.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import kopt
import kopt.functional as F
from kopt.functional.learning_rate import learning_rate_source
from kopt.functional.sgd import SGDState
from tests.catalogue import CATALOGUE
from tests.helpers import jit_max_traces

OPTIMIZERS = [e.factory_name for e in CATALOGUE]
SILENT_STEPS = {e.factory_name: e.silent_steps for e in CATALOGUE}


def _params():
    return {"w": jnp.linspace(0.5, 1.5, 12, dtype=jnp.float32).reshape(3, 4),
            "b": jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float32)}


def _grads():
    return {"w": jnp.linspace(-0.3, 0.4, 12, dtype=jnp.float32).reshape(3, 4),
            "b": jnp.linspace(0.2, -0.1, 4, dtype=jnp.float32)}


def _close(a, b):
    """Equal up to float32 rounding (XLA may fold a constant rate differently)."""
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-8)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------ #13.11 extra args
def _transforms():
    mesh = jax.make_mesh((1,), ("data",))
    rule = F.Rule(slots=(), step=lambda g, s, lr, t: (-lr * g, {}))
    out = {name: (lambda name=name: getattr(F, name)(learning_rate=0.1))
           for name in OPTIMIZERS}
    out.update({
        "chain": lambda: F.chain(F.clip_by_norm(1.0), F.adam(0.1)),
        "clip_by_norm": lambda: F.clip_by_norm(1.0),
        "clip_by_value": lambda: F.clip_by_value(1.0),
        "clip_by_global_norm": lambda: F.clip_by_global_norm(1.0),
        "add_decayed_weights": lambda: F.add_decayed_weights(0.1),
        "unscale_gradients": lambda: F.unscale_gradients(2.0),
        "ema": lambda: F.ema(0.9),
        "accumulate_gradients": lambda: F.accumulate_gradients(F.adam(0.1), 2),
        "elementwise_transform": lambda: F.elementwise_transform(rule, SGDState, 0.1),
        "partition": lambda: F.partition({"a": F.adam(0.1), "s": F.sgd(0.1)},
                                         {"w": "a", "b": "s"}),
        "multi_transform": lambda: F.multi_transform({"a": F.adam(0.1), "f": "frozen"},
                                                     {"w": "a", "b": "f"}),
        "frozen": F.frozen,
        "set_to_zero": F.set_to_zero,
        "skip_nonfinite": lambda: F.skip_nonfinite(F.adam(0.1)),
        "dynamic_loss_scale": lambda: F.dynamic_loss_scale(F.adam(0.1), initial_scale=2.0),
        "shard_state": lambda: F.shard_state(F.adam(0.1), mesh, "data"),
        "lars-masked": lambda: F.lars(0.1, trust_ratio_mask={"w": True, "b": False}),
    })
    return out


TRANSFORMS = _transforms()
NOT_TRANSFORMS = {"apply_updates", "iteration_count", "current_learning_rate",
                  "set_learning_rate", "path_labels", "state_shardings",
                  "schedule_free_eval_params", "all_finite", "quantization_map",
                  "resolve_learning_rate", "learning_rate_source", "muon_branches",
                  "aggregate_gradients"}   # aggregate_gradients: its own test below


def test_every_public_factory_is_covered():
    public = {n for n in F.__all__ if callable(getattr(F, n)) and n[0].islower()}
    assert public - NOT_TRANSFORMS <= set(TRANSFORMS), public - NOT_TRANSFORMS - set(TRANSFORMS)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_update_accepts_and_ignores_extra_args(name):
    tx = TRANSFORMS[name]()
    params, grads = _params(), _grads()
    state = tx.init(params)
    plain = tx.update(grads, state, params)
    extra = tx.update(grads, state, params, foo=1, unexpected_extra_args=jnp.ones(3))
    assert _close(plain, extra)
    jitted = jax.jit(lambda g, s, p: tx.update(g, s, p, foo=1))(grads, state, params)
    assert _close(plain, jitted)


def test_aggregate_gradients_accepts_extra_args():
    mesh = jax.make_mesh((8,), ("d",))
    tx = F.aggregate_gradients("d")
    g = jax.device_put(jnp.arange(8.0, dtype=jnp.float32),
                       jax.sharding.NamedSharding(mesh, P("d")))
    run = jax.shard_map(lambda x: tx.update(x, tx.init(x), None, foo=1)[0], mesh=mesh,
                        in_specs=P("d"), out_specs=P("d"))
    np.testing.assert_allclose(np.asarray(run(g)), np.full(8, 28.0))


def _spy():
    """An optax GradientTransformationExtraArgs that records the extra args it gets."""
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return updates, state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update), seen


@pytest.mark.parametrize("wrap", [
    lambda t: F.chain(F.clip_by_norm(1.0), t),
    lambda t: F.partition({"x": t, "y": F.sgd(0.1)}, {"w": "x", "b": "y"}),
    lambda t: F.skip_nonfinite(t),
    lambda t: F.dynamic_loss_scale(t, initial_scale=2.0),
    lambda t: F.accumulate_gradients(t, 2),
], ids=["chain", "partition", "skip_nonfinite", "dynamic_loss_scale", "accumulate"])
def test_wrappers_pass_extra_args_on(wrap):
    inner, seen = _spy()
    tx = wrap(inner)
    params = _params()
    state = tx.init(params)
    tx.update(_grads(), state, params, value=1.0, key=2)
    assert seen and all(s == ["key", "value"] for s in seen)
    # A plain optax GradientTransformation (no **extra_args) gets none.
    plain = F.chain(optax.scale(1.0), F.sgd(0.1))
    plain.update(_grads(), plain.init(params), params, value=1.0)


# ------------------------------------------------------------------ #13.12 inject_hyperparams
# Arguments that fix the compiled program, so cannot be injected (traced): Muon's
# Newton-Schulz iteration count (its other numbers are injected; tests/test_muon_schedule_free.py).
INJECT_STATIC = {"muon": ("ns_steps",)}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_learning_rate(name):
    tx = optax.inject_hyperparams(getattr(F, name), static_args=INJECT_STATIC.get(name, ()))(
        learning_rate=0.1)
    params, grads = _params(), _grads()
    state = tx.init(params)
    step = jit_max_traces(tx.update)   # the new rate must not retrace
    for _ in range(SILENT_STEPS.get(name, 0)):   # updates that do not move the params
        _, state = step(grads, state, params)
    u1, s1 = step(grads, state, params)
    u_again, _ = step(grads, state, params)
    assert _close(u1, u_again)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
    u2, s2 = step(grads, state, params)
    assert not _close(u1, u2)
    if name not in ("ftrl", "adafactor"):   # lr enters these nonlinearly
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a) / 2, rtol=1e-5, atol=1e-7)
    # The inner state reports the injected rate; a second step runs from the new state.
    np.testing.assert_allclose(float(F.current_learning_rate(s2.inner_state)), 0.05)
    step(grads, s2, params)


@pytest.mark.parametrize("name,hyper,values", [
    ("adam", "beta_1", (0.9, 0.5)),
    ("sgd", "momentum", (0.9, 0.5)),
    ("rmsprop", "momentum", (0.9, 0.0)),
    ("lars", "momentum", (0.9, 0.5)),
    ("adam", "clipnorm", (0.01, 1e6)),
    ("adamw", "weight_decay", (0.1, 0.0)),
    ("radam", "beta_2", (0.999, 0.9)),
    ("ademamix", "beta_3", (0.9999, 0.99)),
    ("schedule_free_adamw", "warmup_steps", (0, 10)),
])
def test_inject_hyperparams_other_hyperparameters(name, hyper, values):
    params, grads = _params(), _grads()
    tx = optax.inject_hyperparams(getattr(F, name))(learning_rate=0.1, **{hyper: values[0]})
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(6):   # past RAdam's rectification threshold
        _, state = step(grads, state, params)
    u2, _ = step(grads, state, params)
    state.hyperparams[hyper] = jnp.asarray(values[1], state.hyperparams[hyper].dtype)
    u3, _ = step(grads, state, params)
    assert not _close(u2, u3)
    # The same as a transform built with the new value from the start of this step.
    ref = getattr(F, name)(learning_rate=0.1, **{hyper: values[1]})
    ref_state = state.inner_state
    u_ref, _ = ref.update(grads, jax.tree.map(jnp.asarray, ref_state), params)
    for a, b in zip(jax.tree.leaves(u3), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7)


def test_inject_hyperparams_sgd_momentum_zero_keeps_plain_sgd():
    tx = optax.inject_hyperparams(F.sgd)(learning_rate=0.1)   # momentum=0.0 injected
    params, grads = _params(), _grads()
    state = tx.init(params)
    assert state.inner_state.momentum is None   # Keras's layout: no momentum slot
    u, _ = jax.jit(tx.update)(grads, state, params)
    for a, g in zip(jax.tree.leaves(u), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), -0.1 * np.asarray(g), rtol=1e-6)


# ------------------------------------------------------------------ #13.15 set_learning_rate
def test_set_learning_rate_refuses_a_schedule_state():
    params, grads = _params(), _grads()
    sched = kopt.schedules.ExponentialDecay(0.1, 10, 0.5)
    for tx in (F.adam(sched), F.sgd(lambda step: 0.1), F.sgd(lambda: 0.1),
               F.chain(F.clip_by_norm(1.0), F.adam(sched)), F.add_decayed_weights(0.1, sched)):
        state = tx.init(params)
        with pytest.raises(ValueError, match="schedule") as info:
            F.set_learning_rate(state, 0.5)
        assert isinstance(info.value, TypeError)   # Keras raises TypeError here
        assert "learning rate is not settable" in str(info.value)
        _, state = tx.update(grads, state, params)   # still marked after a step
        with pytest.raises(ValueError, match="learning_rate=0.5"):
            F.set_learning_rate(state, 0.5)


def test_set_learning_rate_refuses_an_injected_state():
    tx = optax.inject_hyperparams(F.adam)(learning_rate=0.1)
    state = tx.init(_params())
    with pytest.raises(ValueError, match=r"hyperparams\['learning_rate'\]"):
        F.set_learning_rate(state, 0.5)


def test_set_learning_rate_on_a_float_state_still_works():
    params, grads = _params(), _grads()
    tx = F.adam(0.1)
    state = tx.init(params)
    assert learning_rate_source(state) is None
    state = F.set_learning_rate(state, np.asarray(0.2, np.float32))
    np.testing.assert_allclose(float(F.current_learning_rate(state)), 0.2)
    _, state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(float(F.current_learning_rate(state)), 0.2)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="learning_rate="):
            F.set_learning_rate(state, bad)


def test_the_schedule_marker_keeps_fields_leaves_and_pickles():
    params = _params()
    plain = F.adam(0.1).init(params)
    marked = F.adam(kopt.schedules.Constant(0.1)).init(params)
    assert type(marked)._fields == type(plain)._fields
    assert isinstance(marked, type(plain))
    assert len(jax.tree.leaves(marked)) == len(jax.tree.leaves(plain))
    assert learning_rate_source(marked) == "schedule"
    back = pickle.loads(pickle.dumps(jax.device_get(marked)))
    assert learning_rate_source(back) == "schedule"
    again = jax.tree.map(lambda x: x, marked)
    assert learning_rate_source(again) == "schedule"
    assert repr(type(marked).__name__) == repr("AdamState")


# ------------------------------------------------------------------ #13.5 callables
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_argument_callable_learning_rate(name):
    params, grads = _params(), _grads()
    calls = []

    def lr():
        calls.append(1)
        return jnp.asarray(0.1, jnp.float32)

    ref, tx = getattr(F, name)(learning_rate=0.1), getattr(F, name)(learning_rate=lr)
    u_ref, s_ref = jax.jit(ref.update)(grads, ref.init(params), params)
    u, s = jax.jit(tx.update)(grads, tx.init(params), params)
    assert calls   # evaluated, traced, by the update
    assert _close(u, u_ref)
    assert _close(s.count, s_ref.count)
    one_arg = getattr(F, name)(learning_rate=lambda step: 0.1)
    u1, _ = one_arg.update(grads, one_arg.init(params), params)
    assert _close(u1, u_ref)
    with pytest.raises(ValueError, match="learning_rate"):
        getattr(F, name)(learning_rate=lambda a, b: 0.1)


def test_callables_of_the_wrong_arity_are_refused():
    def kw_only(*, step):
        return 0.1

    for bad in (lambda a, b: 0.1, lambda a, b, c=1: 0.1, kw_only):
        with pytest.raises(ValueError, match="learning_rate=") as info:
            F.adam(bad)
        assert "one, the step count" in str(info.value)
    F.adam(lambda step, scale=2.0: 0.1 * scale)   # optional arguments are fine
    F.adam(lambda *args: 0.1)


def test_a_schedule_must_return_a_scalar():
    params, grads = _params(), _grads()
    with pytest.raises(ValueError, match=r"scalar.*shape \(3,\)"):
        F.adam(lambda step: jnp.full((3,), 0.1)).init(params)
    tx = F.adam(lambda step: jnp.where(step > 0, jnp.ones((2,)), 1.0)[0])
    tx.update(grads, tx.init(params), params)   # a scalar after indexing: fine
    with pytest.raises(ValueError, match="scalar"):
        tx = F.adam(lambda step: jnp.ones((2,), jnp.float32) * step.astype(jnp.float32))
        jax.jit(tx.update)(grads, tx.init(params), params)


# ------------------------------------------------------------------ #13.14 convergence
def _parabola():
    x0 = jnp.array([-1.0, 10.0, 1.0], jnp.float32)
    xf = jnp.array([1.0, -1.0, 1.0], jnp.float32)
    return x0, xf, lambda p: jnp.sum(jnp.square(p - xf))


def _rosenbrock():
    x0 = jnp.array([0.0, 0.0], jnp.float32)
    xf = jnp.array([1.0, 1.0], jnp.float32)
    return x0, xf, lambda p: jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - p[0] ** 2)


# Per-optimizer settings, as optax's alias test has them (its learning rates where the
# update rule is the same). All converge within 10,000 steps on both targets.
CONVERGENCE = [
    ("sgd", {"learning_rate": 1e-3}),
    ("sgd", {"learning_rate": 1e-3, "momentum": 0.9}),
    ("rmsprop", {"learning_rate": 1e-2}),
    ("rmsprop", {"learning_rate": 5e-3, "momentum": 0.9}),
    ("adam", {"learning_rate": 1e-1}),
    ("adam", {"learning_rate": 1e-1, "amsgrad": True}),
    ("adamw", {"learning_rate": 1e-2}),
    ("adadelta", {"learning_rate": 0.1, "rho": 0.9, "epsilon": 1e-6}),   # optax's defaults
    ("adagrad", {"learning_rate": 1.0}),
    ("adamax", {"learning_rate": 1e-1}),
    ("nadam", {"learning_rate": 1e-2}),
    ("ftrl", {"learning_rate": 0.5}),
    ("lion", {"learning_rate": 1e-2, "weight_decay": 1e-4}),
    ("adafactor", {"learning_rate": 1e-2}),
    ("lamb", {"learning_rate": 1e-3}),
    ("radam", {"learning_rate": 5e-3}),
    ("adabelief", {"learning_rate": 1e-2}),
    ("adan", {"learning_rate": 1e-1}),
    ("ademamix", {"learning_rate": 1e-2}),
    ("lars", {"learning_rate": 0.1}),
    ("adopt", {"learning_rate": 1e-2}),
    ("muon", {"learning_rate": 1e-2}),   # vectors take Muon's AdamW branch
    ("schedule_free_adamw", {"learning_rate": 1e-2}),
]
CONVERGENCE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CONVERGENCE]


def _run(tx, target, steps=10_000):
    x0, xf, f = target()

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(f)(p), s, p)
        return (F.apply_updates(p, u), s), None

    run = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[0])
    p, _ = run((x0, tx.init(x0)))
    return np.asarray(p), np.asarray(xf)


def test_convergence_covers_every_optimizer():
    assert {n for n, _ in CONVERGENCE} == set(OPTIMIZERS)


@pytest.mark.parametrize("name,kwargs", CONVERGENCE, ids=CONVERGENCE_IDS)
def test_convergence(name, kwargs):
    tx = getattr(F, name)(**kwargs)
    for target in (_parabola, _rosenbrock):
        p, xf = _run(tx, target)
        np.testing.assert_allclose(p, xf, rtol=3e-2, atol=3e-2, err_msg=target.__name__)

    # A jitted step does not recompile after the first call: init's state and a stepped
    # state have the same structure, shapes, dtypes and weak types.
    x0, _, f = _rosenbrock()
    @jit_max_traces
    def step(p, s):
        u, s = tx.update(jax.grad(f)(p), s, p)
        return F.apply_updates(p, u), s

    p, s = x0, tx.init(x0)
    for _ in range(3):
        p, s = step(p, s)


def test_adadelta_keras_defaults_stall_at_lr_0_1_exactly_as_optax():
    """Keras's defaults (rho=0.95, epsilon=1e-7) move the parabola's second coordinate
    from 10 to only ~5.6 in 10,000 steps at lr 0.1; optax with the same settings does
    exactly the same. Documented in `kopt.functional.adadelta`."""
    ours, xf = _run(F.adadelta(0.1), _parabola)
    theirs, _ = _run(optax.adadelta(0.1, rho=0.95, eps=1e-7), _parabola)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert not np.allclose(ours, xf, rtol=3e-2, atol=3e-2)   # it does stall
    ours, _ = _run(F.adadelta(0.1, rho=0.9, epsilon=1e-6), _parabola)
    theirs, _ = _run(optax.adadelta(0.1), _parabola)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(ours, xf, rtol=3e-2, atol=3e-2)


def test_resolve_learning_rate_is_the_shared_helper():
    """The helper the stateful layer reuses for its constructor and setter."""
    from kopt.functional.validation import ArgumentTypeError

    for number in (0.1, np.float32(0.1), np.asarray(0.1, np.float32), jnp.asarray(0.1), 1):
        value, arity = F.resolve_learning_rate(number)
        assert type(value) is float and arity is None
        assert value == pytest.approx(0.1 if number != 1 else 1.0, rel=1e-6)

    def zero():
        return 0.1

    sched = kopt.schedules.Constant(0.1)
    assert F.resolve_learning_rate(zero) == (zero, 0)
    assert F.resolve_learning_rate(sched) == (sched, 1)
    assert F.resolve_learning_rate(optax.constant_schedule(0.1))[1] == 1
    with pytest.raises(ValueError, match="learning_rate="):
        F.resolve_learning_rate(lambda a, b: 0.1)
    for bad in (float("nan"), float("inf"), -0.5, np.float32("nan")):
        with pytest.raises(ValueError, match="learning_rate="):
            F.resolve_learning_rate(bad)
    for bad in ("0.1", None, [0.1], np.ones(2), True):
        with pytest.raises(ArgumentTypeError, match="should be float"):
            F.resolve_learning_rate(bad)


@pytest.mark.parametrize("factory,kwargs,hyper,new", [
    (F.add_decayed_weights, {"weight_decay": 0.1, "learning_rate": 0.5}, "learning_rate", 0.25),
    (F.clip_by_norm, {"clipnorm": 0.1}, "clipnorm", 0.05),
    (F.clip_by_value, {"clipvalue": 0.1}, "clipvalue", 0.05),
    (F.clip_by_global_norm, {"global_clipnorm": 0.1}, "global_clipnorm", 0.05),
    (F.unscale_gradients, {"loss_scale_factor": 2.0}, "loss_scale_factor", 4.0),
    (F.ema, {"ema_momentum": 0.9, "ema_overwrite_frequency": 1}, "ema_momentum", 0.5),
], ids=["add_decayed_weights", "clip_by_norm", "clip_by_value", "clip_by_global_norm",
        "unscale_gradients", "ema"])
def test_inject_hyperparams_on_the_other_factories(factory, kwargs, hyper, new):
    params, grads = _params(), _grads()
    tx = optax.inject_hyperparams(factory)(**kwargs)
    state = tx.init(params)
    step = jax.jit(tx.update)
    u1, s1 = step(grads, state, params)
    if factory is F.ema:   # the first EMA step copies the params; compare second steps
        state = s1
        params = jax.tree.map(lambda x: x + 1.0, params)
        u1, _ = step(grads, state, params)
    state.hyperparams[hyper] = jnp.asarray(new, jnp.float32)
    u2, _ = step(grads, state, params)
    assert not _close(u1, u2)
    ref = factory(**{**kwargs, hyper: new})
    ref_state = ref.init(params) if factory is not F.ema else state.inner_state
    u_ref, _ = ref.update(grads, ref_state, params)
    assert _close(u2, u_ref)
