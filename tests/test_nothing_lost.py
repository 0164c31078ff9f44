"""Nothing lost (SPEC §4 and §5): a failed step changes nothing, a step consumes only the
buffers kopt owns, and threads see consistent snapshots.

Each test tries to break one promise of the README's "Guarantees" section the way a user
would hit it: an exception raised inside the compiled step, `jax_debug_nans`, a variable
whose `assign` raises, arrays the user still holds, another thread.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from tests.catalogue import BY_NAME

SHAPES = {"kernel": (6, 4), "bias": (4,)}


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [kopt.Variable(rng.standard_normal(s).astype(np.float32), name=n)
            for n, s in SHAPES.items()]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in SHAPES.values()]


def _snapshot(opt, variables):
    return [np.array(v) for v in variables], [np.array(w) for w in opt.get_weights()]


def _assert_same(before, after):
    for a, b in zip(before[0] + before[1], after[0] + after[1]):
        np.testing.assert_array_equal(a, b)
    assert len(before[1]) == len(after[1])


class _Boom(Exception):
    pass


def _exploding_schedule(at_step: int):
    """A schedule whose host callback raises when the step count reaches `at_step`."""

    def check(step):
        if int(step) >= at_step:
            raise _Boom(f"schedule failed at step {int(step)}")
        return np.float32(0.01)

    def schedule(step):
        return jax.pure_callback(check, jax.ShapeDtypeStruct((), jnp.float32), step)

    return schedule


# --------------------------------------------------------------------------- failures

@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_exception_inside_the_compiled_step_changes_nothing(name):
    """Every optimizer: an exception raised while the compiled step runs (here by a host
    callback in the schedule) leaves the variables and the state bit for bit unchanged,
    readable, and the optimizer usable."""
    opt = BY_NAME[name].cls(learning_rate=_exploding_schedule(3))
    variables = _variables()
    for _ in range(2):
        opt.apply_gradients(zip(_grads(), variables))
    before = _snapshot(opt, variables)
    with pytest.raises(Exception, match="schedule failed"):
        opt.apply_gradients(zip(_grads(), variables))
    _assert_same(before, _snapshot(opt, variables))
    assert int(opt.iterations) == 2


def test_debug_nans_keeps_the_model():
    """With `jax_debug_nans`, a NaN gradient raises FloatingPointError and the model is
    still there to debug (JAX re-runs the step op by op; nothing was donated)."""
    opt = kopt.optimizers.Adam(0.1)
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    before = _snapshot(opt, variables)
    bad = [g.at[0].set(jnp.nan) for g in _grads()]
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        opt.apply_gradients(zip(bad, variables))
    _assert_same(before, _snapshot(opt, variables))
    opt.apply_gradients(zip(_grads(), variables))   # and it trains on
    assert int(opt.iterations) == 2


def test_minimize_loss_raising_in_a_callback_changes_nothing():
    opt = kopt.optimizers.SGD(0.1, momentum=0.9)
    variables = _variables()

    def fail(x):
        raise _Boom("loss failed")

    def loss(values, x):
        jax.debug.callback(fail, x)
        return sum(jnp.sum(v ** 2) for v in values) * x

    def good(values, x):
        return sum(jnp.sum(v ** 2) for v in values) * x

    opt.minimize(good, variables, jnp.float32(1.0))
    before = _snapshot(opt, variables)
    with pytest.raises(Exception, match="loss failed"):
        opt.minimize(loss, variables, jnp.float32(1.0))
    _assert_same(before, _snapshot(opt, variables))


class _Fragile:
    """A variable-like object whose `assign` raises once armed."""

    def __init__(self, value, name):
        self.value, self.name, self.armed = jnp.asarray(value), name, False
        self.shape, self.dtype = self.value.shape, self.value.dtype

    def assign(self, value):
        if self.armed:
            raise _Boom(f"cannot assign {self.name}")
        self.value = value


def test_failed_assign_is_rolled_back():
    rng = np.random.default_rng(0)
    variables = [_Fragile(rng.standard_normal(s).astype(np.float32), n) for n, s in SHAPES.items()]
    opt = kopt.optimizers.Adam(0.1)
    opt.apply_gradients(zip(_grads(), variables))
    before = _snapshot(opt, variables)
    variables[1].armed = True   # the second assign fails after the first succeeded
    with pytest.raises(_Boom):
        opt.apply_gradients(zip(_grads(), variables))
    _assert_same(before, _snapshot(opt, variables))
    variables[1].armed = False
    opt.apply_gradients(zip(_grads(), variables))
    assert int(opt.iterations) == 2


def test_schedule_that_raises_when_set_is_not_half_applied():
    opt = kopt.optimizers.Adam(kopt.schedules.ExponentialDecay(0.1, 10, 0.5))
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    config, rate = opt.get_config(), opt.learning_rate

    def broken(step):
        raise _Boom("bad schedule")

    with pytest.raises(_Boom):
        opt.learning_rate = broken
    assert opt.get_config() == config and opt.learning_rate == rate
    with pytest.raises(ValueError, match="scalar"):
        opt.learning_rate = lambda step: jnp.full((3,), 0.1)
    with pytest.raises(ValueError, match="finite scalar"):
        opt.learning_rate = lambda step: jnp.float32(jnp.nan)
    assert opt.get_config() == config
    opt.apply_gradients(zip(_grads(), variables))


def test_schedule_returning_nan_is_refused_at_build_and_changes_nothing():
    opt = kopt.optimizers.SGD(lambda step: jnp.float32(jnp.nan))
    variables = _variables()
    before = [np.array(v) for v in variables]
    with pytest.raises(ValueError, match="finite scalar"):
        opt.apply_gradients(zip(_grads(), variables))
    assert not opt.built
    for a, v in zip(before, variables):
        np.testing.assert_array_equal(a, np.array(v))


def test_invalid_weight_decay_regex_is_refused_before_build():
    opt = kopt.optimizers.AdamW(0.1)
    with pytest.raises(ValueError, match="regular expressions"):
        opt.exclude_from_weight_decay(var_names=["(unclosed"])
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))   # still builds and steps
    assert opt.built


def test_finalize_before_any_step_keeps_the_variables():
    opt = kopt.optimizers.Adam(0.1, use_ema=True)
    variables = _variables()
    opt.build(variables)
    before = [np.array(v) for v in variables]
    opt.finalize_variable_values(variables)
    for a, v in zip(before, variables):
        np.testing.assert_array_equal(a, np.array(v))


# --------------------------------------------------------------------------- set_weights and state

@pytest.mark.parametrize("count,match", [(-1, r"in \[0, "), (2**31, r"in \[0, "),
                                         (np.array([1, 2]), "0-d integer"), (1.5, "0-d integer")])
def test_set_weights_refuses_bad_counts_and_changes_nothing(count, match):
    opt = kopt.optimizers.Adam(0.1)
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    before = _snapshot(opt, variables)
    weights = opt.get_weights()
    weights[0] = count
    with pytest.raises(ValueError, match=match):
        opt.set_weights(weights)
    _assert_same(before, _snapshot(opt, variables))


def test_set_weights_copies_its_input():
    opt = kopt.optimizers.Adam(0.1)
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    weights = opt.get_weights()
    expected = [w.copy() for w in weights]
    opt.set_weights(weights)
    for w in weights[1:]:
        w[...] = 123.0   # later writes to the caller's arrays must not reach the state
    for a, b in zip(opt.get_weights(), expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16", "int8"])
def test_savez_round_trip_for_every_state_dtype(tmp_path, state_dtype):
    """`np.savez(path, *opt.get_weights())` then `set_weights` of what `np.load` gives
    back restores the state exactly (bfloat16 comes back as raw `|V2` records)."""
    shapes = {"big": (64, 64), "bias": (4,)}
    rng = np.random.default_rng(0)
    variables = [kopt.Variable(rng.standard_normal(s).astype(np.float32), name=n)
                 for n, s in shapes.items()]
    grads = [jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes.values()]
    opt = kopt.optimizers.Adam(0.1, state_dtype=state_dtype, min_quantized_size=1024)
    for _ in range(3):
        opt.apply_gradients(zip(grads, variables))
    saved = opt.get_weights()
    np.savez(tmp_path / "opt.npz", *saved)
    loaded = np.load(tmp_path / "opt.npz")
    restored = [loaded[f"arr_{i}"] for i in range(len(loaded.files))]
    twin = kopt.optimizers.Adam(0.1, state_dtype=state_dtype, min_quantized_size=1024)
    twin_vars = [kopt.Variable(np.array(v), name=v.name) for v in variables]
    twin.build(twin_vars)
    twin.set_weights(restored)
    for a, b in zip(twin.get_weights(), saved):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8))


def test_state_setter_checks_leaves_and_copies():
    opt = kopt.optimizers.Adam(0.1)
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    state = opt.state
    before = _snapshot(opt, variables)
    with pytest.raises(ValueError, match="count"):
        opt.state = state._replace(count=jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="dtype"):
        opt.state = jax.tree.map(lambda x: x.astype(jnp.float16) if x.dtype == jnp.float32 else x,
                                 state)
    with pytest.raises(ValueError, match=r"in \[0, "):
        opt.state = state._replace(count=jnp.asarray(-3, jnp.int32))
    _assert_same(before, _snapshot(opt, variables))


def test_arrays_handed_out_and_passed_in_stay_valid():
    """`opt.state` read before steps, a state given to two optimizers, and the arrays
    passed to `opt.state = ...` all stay readable after later steps."""
    opt, other = kopt.optimizers.Adam(0.1), kopt.optimizers.Adam(0.1)
    variables, others = _variables(), _variables()
    opt.apply_gradients(zip(_grads(), variables))
    other.build(others)
    lent = opt.state
    lent_copy = [np.array(x) for x in jax.tree.leaves(lent)]
    other.state = lent   # one state given to a second optimizer
    for _ in range(2):
        opt.apply_gradients(zip(_grads(), variables))
        other.apply_gradients(zip(_grads(), others))
    for a, b in zip(jax.tree.leaves(lent), lent_copy):
        np.testing.assert_array_equal(np.array(a), b)
    mine = jax.tree.map(jnp.copy, opt.state)
    opt.state = mine
    opt.apply_gradients(zip(_grads(), variables))
    assert all(not x.is_deleted() for x in jax.tree.leaves(mine))


def test_keras_variables_are_not_donated():
    keras = pytest.importorskip("keras")
    x = jnp.ones((4, 3))
    v = keras.Variable(x, name="w")
    held = v.value
    opt = kopt.optimizers.Adam(0.1)
    opt.apply_gradients([(jnp.ones((4, 3)), v)])
    opt.apply_gradients([(jnp.ones((4, 3)), v)])
    assert not x.is_deleted() and not held.is_deleted()
    np.testing.assert_array_equal(np.asarray(x), np.ones((4, 3)))
    np.testing.assert_array_equal(np.asarray(held), np.ones((4, 3)))


def test_donating_foreign_variables_is_opt_in():
    keras = pytest.importorskip("keras")
    v = keras.Variable(np.ones((4, 3), np.float32), name="w")
    opt = kopt.optimizers.SGD(0.1)
    opt.donate_foreign_variables = True
    opt.apply_gradients([(jnp.ones((4, 3)), v)])
    held = v.value
    opt.apply_gradients([(jnp.ones((4, 3)), v)])
    assert held.is_deleted()   # the documented cost of the opt-in
    np.testing.assert_allclose(np.asarray(v.value), np.full((4, 3), 0.8), rtol=1e-6)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("bad", ["0.1", np.array([object()] * 4, dtype=object), [1, 2, 3, 4]])
def test_non_numeric_gradients_name_the_variable(bad):
    opt = kopt.optimizers.Adam(0.1)
    variables = _variables()
    opt.apply_gradients(zip(_grads(), variables))
    before = _snapshot(opt, variables)
    with pytest.raises(TypeError, match="'bias'"):
        opt.apply_gradients([(_grads()[0], variables[0]), (bad, variables[1])])
    _assert_same(before, _snapshot(opt, variables))


def test_variables_own_buffer_as_its_gradient():
    """`w.value` passed as `w`'s own gradient (weight decay by hand) is a valid step."""
    v = kopt.Variable(np.full((3,), 2.0, np.float32), name="w")
    opt = kopt.optimizers.SGD(0.25)
    opt.apply_gradients([(v.value, v)])
    np.testing.assert_array_equal(np.asarray(v), np.full((3,), 1.5, np.float32))


# --------------------------------------------------------------------------- threads

def test_concurrent_steps_and_readers():
    """4 threads x 100 steps on one optimizer, plus a reader thread: the result equals a
    sequential run (exact: SGD with dyadic numbers), and every read is a consistent,
    readable snapshot (never a deleted buffer)."""
    v = kopt.Variable(np.zeros((16, 8), np.float32), name="w")
    opt = kopt.optimizers.SGD(0.5)
    grads = [jnp.full((16, 8), 2.0 ** -k, jnp.float32) for k in range(1, 5)]
    errors, reads = [], []
    stop = threading.Event()

    def train(g):
        try:
            for _ in range(100):
                opt.apply_gradients([(g, v)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def read():
        try:
            while not stop.is_set():
                weights = opt.get_weights()
                if not weights:   # not built yet
                    continue
                value = np.asarray(v)
                assert np.all(value == value.flat[0])   # one step's value, not a torn one
                reads.append((int(weights[0]), v.numpy().sum(), len(jax.tree.leaves(opt.state))))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=train, args=(g,)) for g in grads]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    reader.join()
    assert not errors, errors
    assert int(opt.iterations) == 400 and reads
    expected = -0.5 * 100 * sum(2.0 ** -k for k in range(1, 5))
    np.testing.assert_array_equal(np.asarray(v), np.full((16, 8), expected, np.float32))


def test_optimizers_sharing_variables_in_threads():
    v = kopt.Variable(np.zeros((8,), np.float32), name="w")
    opts = [kopt.optimizers.SGD(0.5), kopt.optimizers.SGD(0.25)]
    g = jnp.ones((8,), jnp.float32)
    errors = []

    def train(opt):
        try:
            for _ in range(50):
                opt.apply_gradients([(g, v)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=train, args=(o,)) for o in opts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    np.testing.assert_array_equal(np.asarray(v), np.full((8,), -50 * 0.75, np.float32))


@pytest.mark.parametrize("how", ["apply_gradients", "minimize"])
def test_a_transform_whose_init_shares_one_buffer_steps(how):
    """`skip_nonfinite`'s init puts one zero array in three counters; the donated step
    must not be handed one buffer twice (XLA refuses: "donate the same buffer twice")."""
    tx = kopt.functional.skip_nonfinite(kopt.functional.adam(0.1))
    shared = tx.init(jnp.ones(3))
    leaves = [x for x in jax.tree.leaves(shared) if isinstance(x, jax.Array)]
    assert len({id(x) for x in leaves}) < len(leaves)   # the aliasing this test is about
    opt = kopt.optimizers.Optimizer.from_transform(tx)
    v = kopt.Variable(jnp.ones(3))
    for _ in range(3):
        if how == "minimize":
            opt.minimize(lambda values: jnp.sum(values[0]), [v])
        else:
            opt.apply_gradients([(jnp.ones(3), v)])
    assert int(opt.iterations) == 3
    ref = kopt.functional.adam(0.1)
    p, s = jnp.ones(3), ref.init(jnp.ones(3))
    for _ in range(3):
        u, s = ref.update(jnp.ones(3), s, p)
        p = kopt.functional.apply_updates(p, u)
    np.testing.assert_allclose(v.numpy(), p, rtol=1e-6)
