"""Keras 3's cross-cutting optimizer options: loss_scale_factor, EMA, gradient accumulation.

Each case runs ~10 steps of random gradients on variables of several ranks through Keras 3
itself (`KERAS_BACKEND=jax`), kopt's functional transform (jitted) and kopt's stateful
facade, and checks that params, `iterations` and the EMA agree to float32 rounding.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from tests.catalogue import CATALOGUE
from tests.helpers import jit_max_traces

try:  # tests/ is not a package: pytest puts it on sys.path
    import references as ref
    import test_reference as harness
except ImportError:
    from tests import references as ref
    from tests import test_reference as harness

SHAPES = [(4, 3), (5,), (2, 3, 2)]
STEPS = 10


def _data(seed=0, steps=STEPS, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[(scale * rng.normal(size=s)).astype(np.float32) for s in SHAPES]
             for _ in range(steps)]
    return params, grads


CASES = [
    ("Adam", dict(learning_rate=0.01, loss_scale_factor=8.0)),
    ("SGD", dict(learning_rate=0.05, momentum=0.9, loss_scale_factor=128.0, clipnorm=0.5)),
    ("Adam", dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9)),
    ("Adam", dict(learning_rate=0.05, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3)),
    ("Nadam", dict(learning_rate=0.05, use_ema=True, ema_overwrite_frequency=2)),
    ("SGD", dict(learning_rate=0.1, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=4)),
    ("Adam", dict(learning_rate=0.05, gradient_accumulation_steps=3)),
    ("AdamW", dict(learning_rate=0.05, weight_decay=0.1, global_clipnorm=1.0,
                   gradient_accumulation_steps=3)),
    ("Adam", dict(schedule=(0.1, 2, 0.5), gradient_accumulation_steps=3)),
    ("SGD", dict(learning_rate=0.1, gradient_accumulation_steps=3)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.5, centered=True,
                     gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.7,
                     ema_overwrite_frequency=2, loss_scale_factor=4.0)),
    ("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.01,
                  gradient_accumulation_steps=2, use_ema=True)),
]
IDS = [f"{c}-{i}" for i, (c, _) in enumerate(CASES)]


def _keras_kwargs(keras, kwargs):
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        lr0, decay_steps, rate = kwargs.pop("schedule")
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
            lr0, decay_steps, rate)
    return kwargs


def _kopt_kwargs(kwargs):
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        lr0, decay_steps, rate = kwargs.pop("schedule")
        kwargs["learning_rate"] = kopt.schedules.ExponentialDecay(lr0, decay_steps, rate)
    return kwargs


def run_keras(cls_name, kwargs, params, grads_seq):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    opt = getattr(keras.optimizers, cls_name)(**_keras_kwargs(keras, kwargs))
    variables = [keras.Variable(p, dtype="float32") for p in params]
    out = []
    for grads in grads_seq:
        # Keras's EMA overwrite multiplies float32 by int32: not allowed in strict mode.
        with jax.numpy_dtype_promotion("standard"):
            opt.apply([jnp.asarray(g) for g in grads], variables)
        ema = None
        if kwargs.get("use_ema"):
            ema = [np.asarray(a.value) for a in opt._model_variables_moving_average]
        out.append(([np.asarray(v.value) for v in variables], int(opt.iterations), ema))
    return out


def run_functional(cls_name, kwargs, params, grads_seq, bucket_threshold=0):
    fn = getattr(kopt.functional, cls_name.lower())
    tx = fn(**_kopt_kwargs(kwargs), bucket_threshold=bucket_threshold)
    p = tuple(jnp.asarray(x) for x in params)
    state = tx.init(p)
    step = jax.jit(tx.update)
    out = []
    for grads in grads_seq:
        updates, state = step(tuple(jnp.asarray(g) for g in grads), state, p)
        p = kopt.functional.apply_updates(p, updates)
        ema = state.ema.to_leaves() if kwargs.get("use_ema") else None
        out.append(([np.asarray(x) for x in p], int(kopt.functional.iteration_count(state)),
                    None if ema is None else [np.asarray(x) for x in ema]))
    return out


def run_stateful(cls_name, kwargs, params, grads_seq, bucket_threshold=0):
    opt = getattr(kopt.optimizers, cls_name)(**_kopt_kwargs(kwargs),
                                             bucket_threshold=bucket_threshold)
    variables = [kopt.Variable(jnp.asarray(p)) for p in params]
    out = []
    for grads in grads_seq:
        opt.apply_gradients(zip([jnp.asarray(g) for g in grads], variables))
        ema = opt.state.ema.to_leaves() if kwargs.get("use_ema") else None
        out.append(([v.numpy() for v in variables], int(opt.iterations),
                    None if ema is None else [np.asarray(x) for x in ema]))
    return out, opt, variables


def _assert_close(ours, theirs, rtol=1e-5, atol=1e-6):
    assert len(ours) == len(theirs)
    for k, ((p1, it1, e1), (p2, it2, e2)) in enumerate(zip(ours, theirs)):
        assert it1 == it2, f"step {k}: iterations {it1} != {it2}"
        for a, b in zip(p1, p2):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"params, step {k}")
        if e2 is not None:
            for a, b in zip(e1, e2):
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"ema, step {k}")


@pytest.mark.parametrize("bucket_threshold", [0, 64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_keras(case, bucket_threshold):
    cls_name, kwargs = case
    scale = kwargs.get("loss_scale_factor", 1.0)
    params, grads = _data(scale=scale)   # gradients of a loss scaled by the factor
    expected = run_keras(cls_name, kwargs, params, grads)
    _assert_close(run_functional(cls_name, kwargs, params, grads, bucket_threshold), expected)
    ours, _, _ = run_stateful(cls_name, kwargs, params, grads, bucket_threshold)
    _assert_close(ours, expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stateful_equals_functional(case):
    # The stateful step compiles `apply_updates` into the same jit, so XLA may fuse
    # differently: agreement is to one float32 ulp, not bit for bit.
    cls_name, kwargs = case
    params, grads = _data(seed=3)
    a = run_functional(cls_name, kwargs, params, grads)
    b, _, _ = run_stateful(cls_name, kwargs, params, grads)
    _assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_loss_scale_factor_equals_unscaled_run():
    """Float64 check: scaling the gradients by s with loss_scale_factor=s changes nothing."""
    params, grads = _data()
    plain = run_functional("Adam", dict(learning_rate=0.01), params, grads)
    scaled_grads = [[g * 1024.0 for g in gs] for gs in grads]
    scaled = run_functional("Adam", dict(learning_rate=0.01, loss_scale_factor=1024.0),
                            params, scaled_grads)
    _assert_close(scaled, plain, rtol=1e-6, atol=1e-7)


def test_scale_loss():
    assert kopt.optimizers.Adam().scale_loss(2.5) == 2.5
    assert kopt.optimizers.Adam(loss_scale_factor=4.0).scale_loss(2.5) == 10.0
    x = jnp.asarray(3.0, jnp.float32)
    assert float(kopt.optimizers.SGD(loss_scale_factor=2.0).scale_loss(x)) == 6.0


def _sgd_reference(params, grads_seq, lr, **options):
    """Float64 plain SGD in the one reference loop (`references.keras_loop`): the params,
    `iterations` and (with `use_ema`) the EMA after every call."""
    def record(w, ema, updates):
        return ([x.copy() for x in w], updates,
                [e.copy() for e in ema] if options.get("use_ema") else None)

    return ref.keras_loop(params, grads_seq, lr,
                          lambda w, g, lr, t: [x - lr * y for x, y in zip(w, g)], record,
                          **options)


@pytest.mark.parametrize("freq", [None, 3])
def test_ema_float64_reference(freq):
    params, grads = _data(seed=5)
    kw = dict(learning_rate=0.1, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=freq)
    _assert_close(run_functional("SGD", kw, params, grads),
                  _sgd_reference(params, grads, 0.1, use_ema=True, ema_momentum=0.9,
                                 ema_overwrite_frequency=freq))


def test_accumulation_float64_reference_and_iterations():
    params, grads = _data(seed=7, steps=11)
    ours = run_functional("SGD", dict(learning_rate=0.1, gradient_accumulation_steps=4),
                          params, grads)
    _assert_close(ours, _sgd_reference(params, grads, 0.1, gradient_accumulation_steps=4))
    assert [it for _, it, _ in ours] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


# EMA and accumulation together, Keras's way: the average moves on every call, also the
# calls that only accumulate (with momentum 0 until a first update), and the overwrite
# follows the update count.
EMA_AND_ACCUMULATION = dict(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3,
                            gradient_accumulation_steps=2)


def _reference_trajectory(entry, params, grads_seq, **options):
    """`entry`'s float64 reference (all in `references.keras_loop`) with its example
    hyperparameters and `options`: the params after every call."""
    extra = {"names": [f"v{i}" for i in range(len(params))]} if entry.name == "muon" else {}
    out = entry.reference(params, grads_seq, **extra, **entry.hparams, **options)
    return out[0] if entry.name == "schedulefreeadamw" else out   # (y, x): the params y


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_ema_with_accumulation_matches_the_float64_reference_loop(entry):
    params, grads = _data(seed=11, steps=12)
    tx = entry.make(**EMA_AND_ACCUMULATION)
    step = jax.jit(lambda p, state, g: _apply(tx, p, state, g))
    p = tuple(jnp.asarray(x) for x in params)
    state, ours = tx.init(p), []
    for g in grads:
        p, state = step(p, state, tuple(jnp.asarray(x) for x in g))
        ours.append([np.asarray(x, np.float64) for x in p])
    f64 = [x.astype(np.float64) for x in params]
    expected = _reference_trajectory(entry, f64, [[x.astype(np.float64) for x in g] for g in grads],
                                     **EMA_AND_ACCUMULATION)
    harness.assert_trajectories_close(ours, expected, start=f64)
    assert int(kopt.functional.iteration_count(state)) == len(grads) // 2


def _apply(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return kopt.functional.apply_updates(params, updates), state


def test_accumulation_non_update_steps_change_nothing():
    params, grads = _data(steps=3)
    tx = kopt.functional.adam(0.1, gradient_accumulation_steps=3)
    p = tuple(jnp.asarray(x) for x in params)
    state = tx.init(p)
    for k in range(2):
        updates, new_state = tx.update(tuple(jnp.asarray(g) for g in grads[k]), state, p)
        for u in updates:
            np.testing.assert_array_equal(u, 0)
        for name in ("count", "m", "v"):
            for a, b in zip(jax.tree.leaves(getattr(new_state, name)),
                            jax.tree.leaves(getattr(state, name))):
                np.testing.assert_array_equal(a, b)
        assert int(new_state.micro_step) == k + 1
        state = new_state
    updates, state = tx.update(tuple(jnp.asarray(g) for g in grads[2]), state, p)
    assert int(state.count) == 1 and int(state.micro_step) == 3
    for a in state.accum.to_leaves():
        np.testing.assert_array_equal(a, 0)


def test_accumulation_schedule_reads_raw_step():
    sched = kopt.schedules.ExponentialDecay(1.0, 1, 0.5)
    tx = kopt.functional.sgd(sched, gradient_accumulation_steps=2)
    p = (jnp.zeros((2,), jnp.float32),)
    state = tx.init(p)
    for _ in range(3):
        _, state = tx.update((jnp.ones((2,), jnp.float32),), state, p)
    # three calls, one real update: the stored rate is schedule(3), as Keras's _iterations.
    np.testing.assert_allclose(kopt.functional.current_learning_rate(state), 0.125)
    assert int(kopt.functional.iteration_count(state)) == 1


def test_finalize_variable_values():
    params, grads = _data()
    kw = dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9)
    _, opt, variables = run_stateful("Adam", kw, params, grads)
    ema = [np.asarray(x) for x in opt.state.ema.to_leaves()]
    assert not np.allclose(variables[0].numpy(), ema[0])
    opt.finalize_variable_values(variables)
    for v, e in zip(variables, ema):
        np.testing.assert_array_equal(v.numpy(), e)
    # Without use_ema it does nothing.
    _, opt2, vars2 = run_stateful("Adam", dict(learning_rate=0.05), params, grads)
    before = [v.numpy() for v in vars2]
    opt2.finalize_variable_values(vars2)
    for v, b in zip(vars2, before):
        np.testing.assert_array_equal(v.numpy(), b)
    with pytest.raises(ValueError, match="not among"):
        opt.finalize_variable_values([kopt.Variable(jnp.zeros((4, 3)))])


def test_finalize_matches_keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    params, grads = _data()
    kw = dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9)
    kopt_opt = kopt.optimizers.Adam(**kw)
    kvars = [kopt.Variable(jnp.asarray(p)) for p in params]
    k_opt = keras.optimizers.Adam(**kw)
    kevars = [keras.Variable(p, dtype="float32") for p in params]
    with jax.numpy_dtype_promotion("standard"):
        for g in grads:
            kopt_opt.apply([jnp.asarray(x) for x in g], kvars)
            k_opt.apply([jnp.asarray(x) for x in g], kevars)
        kopt_opt.finalize_variable_values(kvars)
        k_opt.finalize_variable_values(kevars)
    for a, b in zip(kvars, kevars):
        np.testing.assert_allclose(a.numpy(), np.asarray(b.value), rtol=1e-5, atol=1e-6)


NEW_ARGS = dict(use_ema=True, ema_momentum=0.95, ema_overwrite_frequency=5,
                loss_scale_factor=16.0, gradient_accumulation_steps=4)


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_config_round_trip_and_signature(entry):
    cls = entry.cls
    opt = cls(**NEW_ARGS)
    config = opt.get_config()
    for k, v in NEW_ARGS.items():
        assert config[k] == v
    again = cls.from_config(config)
    assert again.get_config() == config
    defaults = cls().get_config()
    assert (defaults["use_ema"], defaults["ema_momentum"], defaults["ema_overwrite_frequency"],
            defaults["loss_scale_factor"], defaults["gradient_accumulation_steps"]) == (
                False, 0.99, None, None, None)
    sig = inspect.signature(entry.factory).parameters
    for k in NEW_ARGS:
        assert k in sig


@pytest.mark.parametrize("kwargs, match", [
    (dict(gradient_accumulation_steps=1), "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=2.5), "gradient_accumulation_steps"),
    (dict(use_ema=True, ema_momentum=1.5), "ema_momentum"),
    (dict(use_ema=True, ema_momentum=-0.1), "ema_momentum"),
    (dict(use_ema=True, ema_overwrite_frequency=0), "ema_overwrite_frequency"),
    (dict(use_ema=True, ema_overwrite_frequency=2.0), "ema_overwrite_frequency"),
    (dict(loss_scale_factor=0.0), "loss_scale_factor"),
    (dict(loss_scale_factor=-2.0), "loss_scale_factor"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kopt.optimizers.Adam(**kwargs)
    with pytest.raises(ValueError, match=match):
        kopt.functional.adam(**kwargs)


def test_ema_needs_params():
    tx = kopt.functional.adam(use_ema=True)
    p = (jnp.ones((3,), jnp.float32),)
    state = tx.init(p)
    with pytest.raises(ValueError, match="params"):
        tx.update(p, state)


@pytest.mark.parametrize("kwargs", [
    dict(use_ema=True), dict(gradient_accumulation_steps=3),
    dict(use_ema=True, gradient_accumulation_steps=2),
])
def test_weights_round_trip(kwargs):
    params, grads = _data(steps=4)
    _, opt, variables = run_stateful("Nadam", dict(learning_rate=0.01, **kwargs), params, grads)
    weights = opt.get_weights()
    n = len(SHAPES)
    n_scalars = 1 + bool(kwargs.get("gradient_accumulation_steps"))   # momentum_cache, micro
    n_slots = 2 + bool(kwargs.get("use_ema")) + bool(kwargs.get("gradient_accumulation_steps"))
    assert len(weights) == 1 + n_scalars + n_slots * n
    assert int(weights[0]) == int(opt.iterations)
    other = kopt.optimizers.Nadam(learning_rate=0.01, **kwargs)
    other_vars = [kopt.Variable(jnp.asarray(v.numpy())) for v in variables]
    other.build(other_vars)
    other.set_weights(weights)
    for a, b in zip(other.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    g = [jnp.asarray(x) for x in grads[0]]
    opt.apply(g, variables)
    other.apply(g, other_vars)
    for a, b in zip(variables, other_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(opt.iterations) == int(other.iterations)


def test_jits_once_and_vmaps():
    tx = kopt.functional.adam(0.1, use_ema=True, ema_overwrite_frequency=2,
                              gradient_accumulation_steps=2, loss_scale_factor=2.0)
    p = {"w": jnp.ones((3, 2), jnp.float32)}
    batched = jax.vmap(tx.init)({"w": jnp.ones((4, 3, 2), jnp.float32)})
    upd, batched = jax.vmap(tx.update)({"w": jnp.ones((4, 3, 2), jnp.float32)}, batched,
                                       {"w": jnp.ones((4, 3, 2), jnp.float32)})
    assert upd["w"].shape == (4, 3, 2)
    state = tx.init(p)
    step = jit_max_traces(tx.update)
    for _ in range(5):
        _, state = step({"w": jnp.ones((3, 2), jnp.float32)}, state, p)
    assert int(state.count) == 2


# --------------------------------------------------------------------------- building blocks


def _run_tx(tx, params, grads_seq, ema_of=None):
    p = tuple(jnp.asarray(x) for x in params)
    state = tx.init(p)
    step = jax.jit(tx.update)
    out = []
    for grads in grads_seq:
        updates, state = step(tuple(jnp.asarray(g) for g in grads), state, p)
        p = kopt.functional.apply_updates(p, updates)
        e = None if ema_of is None else [np.asarray(x) for x in ema_of(state)]
        out.append(([np.asarray(x) for x in p], int(kopt.functional.iteration_count(state)), e))
    return out


def test_composable_unscale_and_ema_match_the_arguments():
    F = kopt.functional
    params, grads = _data(seed=11, scale=8.0)
    kw = dict(ema_momentum=0.9, ema_overwrite_frequency=3)
    built_in = run_functional("Adam", dict(learning_rate=0.05, use_ema=True,
                                           loss_scale_factor=8.0, **kw), params, grads)
    composed = _run_tx(F.chain(F.unscale_gradients(8.0), F.adam(0.05), F.ema(**kw)),
                       params, grads, ema_of=lambda s: jax.tree.leaves(s[2].ema))
    _assert_close(composed, built_in, rtol=1e-6, atol=1e-7)


def test_composable_accumulation_matches_the_argument():
    F = kopt.functional
    params, grads = _data(seed=12)
    built_in = run_functional("Adam", dict(learning_rate=0.05, gradient_accumulation_steps=3),
                              params, grads)
    composed = _run_tx(F.accumulate_gradients(F.adam(0.05), 3), params, grads)
    _assert_close(composed, built_in, rtol=1e-6, atol=1e-7)


def test_composable_validation():
    F = kopt.functional
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        F.accumulate_gradients(F.sgd(), 1)
    with pytest.raises(ValueError, match="ema_momentum"):
        F.ema(2.0)
    with pytest.raises(ValueError, match="loss_scale_factor"):
        F.unscale_gradients(0.0)
