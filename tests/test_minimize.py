"""#17.2: `opt.minimize`, the gradient and the update fused in one compiled, donated call.

It must agree with `value_and_grad` then `apply_gradients` (every option that changes
the update included), keep the variables' structure for `loss_fn`, return `(loss, aux)`
with `has_aux`, compile once per loss function (a learning-rate change or a schedule
step compiles nothing), own buffers as `apply_gradients` does, and refuse bad input with
errors that name it.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx

import kopt
import kopt.interop.flax
from kopt.stateful import minimize as minimize_lib

SHAPES = {"kernel": (5, 3), "bias": (3,)}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((8, 5)).astype(np.float32)),
            jnp.asarray(rng.standard_normal((8, 3)).astype(np.float32)))


def _variables(seed=1):
    rng = np.random.default_rng(seed)
    return [kopt.Variable(rng.standard_normal(s).astype(np.float32), name=n)
            for n, s in SHAPES.items()]


def loss_list(values, x, y):
    kernel, bias = values
    return jnp.mean(jnp.square(jnp.tanh(x @ kernel) + bias[None, :] - y))


def loss_aux(values, x, y):
    err = jnp.tanh(x @ values[0]) + values[1][None, :] - y
    return jnp.mean(jnp.square(err)), {"max": jnp.max(jnp.abs(err)), "err": err}


_value_and_grad = jax.jit(jax.value_and_grad(loss_list))


def _reference_run(make, steps, x, y):
    """`value_and_grad` (of the scaled loss, under `loss_scale_factor`), then
    `apply_gradients`: what `minimize` fuses."""
    opt, variables = make(), _variables()
    scaled = jax.jit(jax.value_and_grad(lambda v, x, y: opt.scale_loss(loss_list(v, x, y))))
    losses = []
    for _ in range(steps):
        loss, grads = scaled([v.value for v in variables], x, y)
        loss = loss if opt.loss_scale_factor is None else loss / opt.loss_scale_factor
        opt.apply_gradients(zip(grads, variables))
        losses.append(float(loss))
    return opt, variables, losses


CASES = {
    "adam": lambda: kopt.optimizers.Adam(0.05),
    "sgd-momentum-nesterov": lambda: kopt.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "rmsprop-centered": lambda: kopt.optimizers.RMSprop(0.01, centered=True, momentum=0.5),
    "lion": lambda: kopt.optimizers.Lion(0.01),
    "adamw-clipnorm-ema": lambda: kopt.optimizers.AdamW(0.05, weight_decay=0.1, clipnorm=0.5,
                                                        use_ema=True),
    "adam-accumulation": lambda: kopt.optimizers.Adam(0.05, gradient_accumulation_steps=2),
    "sgd-loss-scale-factor": lambda: kopt.optimizers.SGD(0.1, loss_scale_factor=128.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_minimize_matches_value_and_grad_then_apply_gradients(name):
    x, y = _data()
    ref, ref_vars, ref_losses = _reference_run(CASES[name], 4, x, y)
    opt, variables = CASES[name](), _variables()
    losses = [float(opt.minimize(loss_list, variables, x, y)) for _ in range(4)]
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-6)
    for a, b in zip(variables, ref_vars):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)
    for a, b in zip(opt.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7)
    assert int(opt.iterations) == int(ref.iterations)


def test_loss_fn_sees_the_structure_of_variables_in_any_order():
    """A dict of variables gives `loss_fn` a dict of values; the optimizer may have been
    built in another order (here reversed), and the update is the same."""
    x, y = _data()
    seen = []

    def loss_dict(p, x, y):
        seen.append(sorted(p))
        return loss_list([p["kernel"], p["bias"]], x, y)

    _, ref_vars, ref_losses = _reference_run(lambda: kopt.optimizers.Adam(0.05), 3, x, y)
    variables = _variables()
    opt = kopt.optimizers.Adam(0.05)
    opt.build(variables[::-1])
    tree = {"kernel": variables[0], "bias": variables[1]}
    losses = [float(opt.minimize(loss_dict, tree, x, y)) for _ in range(3)]
    assert seen and all(keys == ["bias", "kernel"] for keys in seen)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-6)
    for a, b in zip(variables, ref_vars):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)


def test_has_aux_returns_the_loss_and_the_metrics_before_the_update():
    x, y = _data()
    variables, twin = _variables(), _variables()
    opt, ref = kopt.optimizers.Adam(0.05), kopt.optimizers.Adam(0.05)
    vag = jax.jit(jax.value_and_grad(loss_aux, has_aux=True))
    for _ in range(3):
        (want_loss, want_aux), grads = vag([v.value for v in twin], x, y)
        ref.apply_gradients(zip(grads, twin))
        loss, aux = opt.minimize(loss_aux, variables, x, y, has_aux=True)
        assert set(aux) == {"max", "err"} and aux["err"].shape == (8, 3)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(aux["err"]), np.asarray(want_aux["err"]),
                                   rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(float(aux["max"]), float(want_aux["max"]), rtol=2e-6)
    for a, b in zip(variables, twin):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)


def test_no_recompile_on_a_new_batch_a_learning_rate_change_or_a_schedule_step():
    """`loss_fn` runs only while the step is traced: counting its calls counts traces."""
    traces = []

    def counted(values, x, y):
        traces.append(1)
        return loss_list(values, x, y)

    x, y = _data()
    for opt in (kopt.optimizers.Adam(0.05),
                kopt.optimizers.SGD(kopt.schedules.ExponentialDecay(0.1, 2, 0.5))):
        traces.clear()
        variables = _variables()
        opt.minimize(counted, variables, x, y)
        first = len(traces)
        assert first >= 1
        for step in range(4):
            if not callable(opt._learning_rate):
                opt.learning_rate = 0.01 * (step + 1)
            opt.minimize(counted, variables, x + step, y)
        assert len(traces) == first, type(opt).__name__
        (compiled,) = opt._minimize_cache.values()
        assert compiled._cache_size() == 1   # one executable: the donated one
    # and the new rate is the one applied
    opt, variables = kopt.optimizers.SGD(0.5), _variables()
    opt.minimize(loss_list, variables, x, y)
    opt.learning_rate = 0.0
    before = [np.array(v) for v in variables]
    opt.minimize(loss_list, variables, x, y)
    for a, b in zip(variables, before):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_donation_never_deletes_an_array_the_user_holds():
    x, y = _data()
    variables = _variables()
    opt = kopt.optimizers.Adam(0.05)
    opt.minimize(loss_list, variables, x, y)
    held = variables[0].value            # the user keeps the kernel's array
    held_copy = np.array(held)
    pointer = variables[1].value.unsafe_buffer_pointer()   # the bias's: not held
    opt.minimize(loss_list, variables, x, y)
    np.testing.assert_array_equal(np.asarray(held), held_copy)   # still alive, unchanged
    assert not np.array_equal(np.asarray(variables[0]), held_copy)
    assert variables[1].value.unsafe_buffer_pointer() == pointer   # updated in place
    state = opt.state                     # a lent state survives the next step too
    count = np.array(state.count)
    opt.minimize(loss_list, variables, x, y)
    np.testing.assert_array_equal(np.asarray(state.count), count)
    assert int(opt.iterations) == 3


def test_debug_nans_raises_and_changes_nothing():
    x, y = _data()
    variables = _variables()
    opt = kopt.optimizers.Adam(0.05)
    opt.minimize(loss_list, variables, x, y)
    before = [np.array(v) for v in variables], [np.array(w) for w in opt.get_weights()]
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        opt.minimize(loss_list, variables, x.at[0, 0].set(jnp.nan), y)
    for a, b in zip(before[0] + before[1],
                    [np.array(v) for v in variables] + [np.array(w) for w in opt.get_weights()]):
        np.testing.assert_array_equal(a, b)
    assert int(opt.iterations) == 1


def test_keras_variables_with_a_constraint():
    x, y = _data()
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()]

    def make():
        kernel, bias = keras.Variable(init[0], name="kernel"), keras.Variable(init[1], name="bias")
        bias.constraint = keras.constraints.NonNeg()   # (Keras 3.15 drops the constructor's)
        return [kernel, bias]

    ref_vars, variables = make(), make()
    ref, opt = kopt.optimizers.SGD(0.5), kopt.optimizers.SGD(0.5)
    for _ in range(3):
        _, grads = _value_and_grad([v.value for v in ref_vars], x, y)
        ref.apply_gradients(zip(grads, ref_vars))
        opt.minimize(loss_list, variables, x, y)
    assert np.all(np.asarray(variables[1]) >= 0)
    for a, b in zip(variables, ref_vars):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(5, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def test_flax_nnx_pattern_of_the_docstring():
    """The documented nnx pattern trains the module in place, as `nnx.value_and_grad`
    then `apply_gradients` does."""
    x, y = _data()
    model, twin = _MLP(nnx.Rngs(0)), _MLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    treedef = jax.tree.structure(params)
    variables = kopt.interop.flax.variables(model)

    def loss_fn(values, rest, x, y):
        m = nnx.merge(graphdef, jax.tree.unflatten(treedef, values), rest)
        return jnp.mean(jnp.square(m(x) - y))

    def twin_loss(m, x, y):
        return jnp.mean(jnp.square(m(x) - y))

    opt, ref = kopt.optimizers.Adam(0.05), kopt.optimizers.Adam(0.05)
    twin_vars = kopt.interop.flax.variables(twin)
    for _ in range(3):
        want, grads = nnx.value_and_grad(twin_loss)(twin, x, y)
        ref.apply_gradients(zip(jax.tree.leaves(grads), twin_vars))
        loss = opt.minimize(loss_fn, variables, rest, x, y)
        np.testing.assert_allclose(float(loss), float(want), rtol=2e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                    jax.tree.leaves(nnx.state(twin, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)


# --------------------------------------------------------------------------- errors

def _built():
    variables = _variables()
    opt = kopt.optimizers.SGD(0.1)
    opt.build(variables)
    return opt, variables


def _snapshot(opt, variables):
    return [np.array(v) for v in variables] + [np.array(w) for w in opt.get_weights()]


ERRORS = {
    "not-callable": (lambda opt, vs, x, y: opt.minimize("loss", vs, x, y),
                     TypeError, "loss_fn='loss'"),
    "has-aux-not-bool": (lambda opt, vs, x, y: opt.minimize(loss_list, vs, x, y, has_aux=1),
                         TypeError, "has_aux=1"),
    "vector-loss": (lambda opt, vs, x, y: opt.minimize(
        lambda v, x, y: jnp.sum(x @ v[0], axis=0), vs, x, y), TypeError, r"shape \(3,\)"),
    "integer-loss": (lambda opt, vs, x, y: opt.minimize(
        lambda v, x, y: jnp.sum(v[0]).astype(jnp.int32), vs, x, y), TypeError, "int32"),
    "aux-without-has-aux": (lambda opt, vs, x, y: opt.minimize(loss_aux, vs, x, y),
                            TypeError, "has_aux=True"),
    "has-aux-without-pair": (lambda opt, vs, x, y: opt.minimize(loss_list, vs, x, y,
                                                                has_aux=True),
                             TypeError, r"pair \(loss, aux\)"),
    "array-not-variable": (lambda opt, vs, x, y: opt.minimize(loss_list, [vs[0], jnp.ones(3)],
                                                              x, y),
                           TypeError, "leaf 1 is ArrayImpl"),
    "foreign-variable": (lambda opt, vs, x, y: opt.minimize(
        loss_list, [vs[0], kopt.Variable(jnp.ones(3), name="stranger")], x, y),
        ValueError, "'stranger' is not among"),
    "missing-variable": (lambda opt, vs, x, y: opt.minimize(lambda v, x, y: jnp.sum(v[0]),
                                                            [vs[0]], x, y),
                         ValueError, r"missing: \['bias'\]"),
    "duplicate-variable": (lambda opt, vs, x, y: opt.minimize(loss_list, [vs[0], vs[0]], x, y),
                           ValueError, "more than once"),
    "no-variables": (lambda opt, vs, x, y: opt.minimize(loss_list, [], x, y),
                     ValueError, "no variables"),
    "in-jit": (lambda opt, vs, x, y: jax.jit(lambda: opt.minimize(loss_list, vs, x, y))(),
               RuntimeError, "inside a JAX transformation"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input_raises_and_changes_nothing(name):
    call, error, match = ERRORS[name]
    opt, variables = _built()
    x, y = _data()
    opt.minimize(loss_list, variables, x, y)
    before = _snapshot(opt, variables)
    with pytest.raises(error, match=match):
        call(opt, variables, x, y)
    for a, b in zip(before, _snapshot(opt, variables)):
        np.testing.assert_array_equal(a, b)
    assert int(opt.iterations) == 1


def test_a_new_closure_per_call_is_bounded_and_warned_about():
    x, y = _data()
    opt, variables = _built()
    n = minimize_lib.MAX_CACHED_LOSSES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(n):
            opt.minimize(lambda v, x, y, i=i: loss_list(v, x, y), variables, x, y)
    with pytest.warns(UserWarning, match="new function"):
        opt.minimize(lambda v, x, y: loss_list(v, x, y), variables, x, y)
    assert len(opt._minimize_cache) == n


def test_an_optax_transform_in_the_facade_minimizes_with_aux():
    """`Optimizer.from_transform(optax...)` runs the same fused step."""
    import optax

    x, y = _data()
    opt = kopt.optimizers.Optimizer.from_transform(optax.sgd(0.05, momentum=0.9))
    tx = optax.sgd(0.05, momentum=0.9)   # (optax.adam breaks strict dtype promotion)
    variables, params = _variables(), [jnp.asarray(v.value) for v in _variables()]
    state = tx.init(params)
    vag = jax.jit(jax.value_and_grad(loss_aux, has_aux=True))
    for _ in range(3):
        (want, _), grads = vag(params, x, y)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        loss, aux = opt.minimize(loss_aux, variables, x, y, has_aux=True)
        np.testing.assert_allclose(float(loss), float(want), rtol=2e-6)
        assert aux["err"].shape == (8, 3)
    for a, b in zip(variables, params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)


class _CountingVariable:
    """A foreign variable-like object that counts how often its value is read."""

    def __init__(self, value, name):
        self._v, self.name, self.reads = jnp.asarray(value), name, 0

    @property
    def value(self):
        self.reads += 1
        return self._v

    def assign(self, value):
        self._v = value

    @property
    def shape(self):
        return self._v.shape

    @property
    def dtype(self):
        return self._v.dtype


def test_a_step_reads_each_foreign_variable_once():
    """Reading a foreign variable (an nnx Variable through flax) costs a Python call into
    its library: a built optimizer's `minimize` reads each one once per step, to pass its
    value, and does not probe it again to recognise it as a variable."""
    rng = np.random.default_rng(1)
    variables = [_CountingVariable(rng.standard_normal(s).astype(np.float32), n)
                 for n, s in SHAPES.items()]
    opt = kopt.optimizers.Adam(0.05)
    x, y = _data()
    opt.minimize(loss_list, variables, x, y)
    for v in variables:
        v.reads = 0
    opt.minimize(loss_list, variables, x, y)
    assert [v.reads for v in variables] == [1, 1]


def test_a_nonfinite_guard_skips_the_step_as_with_apply_gradients():
    """`skip_nonfinite` in the facade: a batch whose gradients are NaN is skipped by
    `minimize` exactly as by `value_and_grad` then `apply_gradients`."""
    from kopt.functional.nonfinite import skip_nonfinite

    x, y = _data()
    bad = x.at[0, 0].set(jnp.nan)

    def make():
        return kopt.optimizers.Optimizer.from_transform(skip_nonfinite(kopt.functional.adam(0.05)))

    opt, ref = make(), make()
    variables, twin = _variables(), _variables()
    for batch in (x, bad, x):
        _, grads = _value_and_grad([v.value for v in twin], batch, y)
        ref.apply_gradients(zip(grads, twin))
        loss = opt.minimize(loss_list, variables, batch, y)
        assert np.isfinite(float(loss)) == (batch is x)
    for a, b in zip(variables, twin):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-7)
    for a, b in zip(opt.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7)
