"""The stateful facade (`kopt.optimizers`, SPEC section 2): agreement with the functional
layer, exact resume, no recompiles, learning-rate access, minimize, stateless_apply, None
gradients and subsets, configs, weight-decay exclusion and the Variable API."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt

Sched = kopt.optimizers.schedules.ExponentialDecay

# --------------------------------------------------------------------------- helpers

# With bucketing on (`bucket_threshold=BUCKETS`) kernel and bias share flat state buffers and
# "big" keeps its own; with the default (0, off) every leaf keeps its own.
SHAPES = {"kernel": (20, 10), "bias": (10,), "big": (300, 256)}
BUCKETS = 1 << 16
SMALL = {"kernel": (20, 10), "bias": (10,)}
ONES = np.ones((20, 10), np.float32)


def make_variables(seed=0, shapes=SHAPES):
    """Variables with random values (numpy RNG: eager jax ops would each compile)."""
    rng = np.random.default_rng(seed)
    return [
        kopt.Variable(rng.standard_normal(shape).astype(np.float32), name=name)
        for name, shape in shapes.items()
    ]


def snapshot(variables):
    return [np.array(v.value) for v in variables]


@jax.jit
def quadratic_grads(values):
    """Gradients of sum_i sum(c_i * (v_i - t_i)^2) + a sine term, deterministic in `values`."""

    def loss(vals):
        total = jnp.zeros((), jnp.float32)
        for i, v in enumerate(vals):
            target = jnp.full(v.shape, 0.1 * (i + 1), v.dtype)
            total = total + jnp.sum(jnp.square(v - target)) * (i + 1.0) + jnp.sum(jnp.sin(3.0 * v))
        return total

    return jax.grad(loss)(list(values))


def grads_for(variables):
    return quadratic_grads([v.value for v in variables])


def run(opt, variables, steps):
    for _ in range(steps):
        opt.apply_gradients(zip(grads_for(variables), variables))


def assert_values_equal(a, b, atol=1e-7):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-7, atol=atol)


@contextlib.contextmanager
def compile_log():
    """Collect jax's compile/trace log lines (`jax.log_compiles`) emitted inside the block."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling") or message.startswith("Finished tracing"):
                records.append(message)

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield records
    finally:
        logger.removeHandler(handler)


def step_cache_size(opt):
    """Entries in the jit cache of the facade's compiled step, if this kopt and jax expose it
    (`opt._step` is internal, `_cache_size` is jax's private API); None otherwise."""
    size = getattr(getattr(opt, "_step", None), "_cache_size", None)
    return size() if callable(size) else None


# --------------------------------------------------------------------------- functional == stateful

CASES = {
    "sgd_momentum_weight_decay": (
        "SGD",
        "sgd",
        lambda: dict(learning_rate=0.1, momentum=0.9, weight_decay=0.05),
    ),
    "sgd_nesterov_clipnorm": (
        "SGD",
        "sgd",
        lambda: dict(learning_rate=0.1, momentum=0.5, nesterov=True, clipnorm=0.5),
    ),
    "sgd_schedule_global_clipnorm": (
        "SGD",
        "sgd",
        lambda: dict(learning_rate=Sched(0.1, 3, 0.5), global_clipnorm=0.3),
    ),
    "rmsprop_centered_momentum_wd": (
        "RMSprop",
        "rmsprop",
        lambda: dict(
            learning_rate=0.01, momentum=0.5, centered=True, weight_decay=0.1, bucket_threshold=BUCKETS
        ),
    ),
    "rmsprop_schedule_clipvalue": (
        "RMSprop",
        "rmsprop",
        lambda: dict(learning_rate=Sched(0.01, 3, 0.5), clipvalue=0.1),
    ),
    "adam_amsgrad_global_clipnorm": (
        "Adam",
        "adam",
        lambda: dict(learning_rate=0.01, amsgrad=True, global_clipnorm=0.5, bucket_threshold=BUCKETS),
    ),
    "adam_schedule_wd_clipnorm": (
        "Adam",
        "adam",
        lambda: dict(learning_rate=Sched(0.05, 3, 0.5), weight_decay=0.1, clipnorm=1.0),
    ),
    "adamw_schedule_clipnorm": (
        "AdamW",
        "adamw",
        lambda: dict(learning_rate=Sched(0.02, 2, 0.7), weight_decay=0.2, clipnorm=0.5),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stateful_matches_functional(case):
    cls_name, fn_name, kwargs = CASES[case]
    opt = getattr(kopt.optimizers, cls_name)(**kwargs())
    tx = getattr(kopt.functional, fn_name)(**kwargs())
    variables = make_variables()
    params = [jnp.asarray(p) for p in snapshot(variables)]
    state = tx.init(params)

    @jax.jit
    def functional_step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return kopt.functional.apply_updates(params, updates), state

    for step in range(10):
        grads = quadratic_grads(params)
        params, state = functional_step(params, state, grads)
        opt.apply_gradients(zip(grads_for(variables), variables))
        assert_values_equal([v.value for v in variables], params)
        assert int(opt.iterations) == int(kopt.functional.iteration_count(state)) == step + 1
        assert float(opt.learning_rate) == float(kopt.functional.current_learning_rate(state))


# --------------------------------------------------------------------------- exact resume

RESUME_CASES = ["sgd_momentum_weight_decay", "rmsprop_centered_momentum_wd", "adam_schedule_wd_clipnorm"]


@pytest.mark.parametrize("case", RESUME_CASES)
def test_exact_resume_from_get_weights(case):
    cls_name, _, kwargs = CASES[case]
    cls = getattr(kopt.optimizers, cls_name)

    straight_vars = make_variables()
    straight = cls(**kwargs())
    run(straight, straight_vars, 4)
    weights = straight.get_weights()  # a checkpoint after 4 steps
    values = snapshot(straight_vars)
    lr = float(straight.learning_rate)
    run(straight, straight_vars, 4)  # the uninterrupted run goes on to 8

    resumed_vars = [kopt.Variable(x, name=v.name) for x, v in zip(values, straight_vars)]
    resumed = cls.from_config(straight.get_config())
    resumed.build(resumed_vars)
    resumed.set_weights(weights)
    assert int(resumed.iterations) == 4
    assert float(resumed.learning_rate) == lr
    run(resumed, resumed_vars, 4)

    for a, b in zip(resumed_vars, straight_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- recompiles


def test_second_step_compiles_nothing_new():
    variables = make_variables(shapes=SMALL)
    opt = kopt.optimizers.Adam(0.01)
    grads = grads_for(variables)
    with compile_log() as first:
        opt.apply_gradients(zip(grads, variables))
    # Positive control: the log does see the first step's compile.
    assert any(m.startswith("Compiling") for m in first), first
    grads = grads_for(variables)
    with compile_log() as later:
        opt.apply_gradients(zip(grads, variables))
    assert later == []
    assert step_cache_size(opt) in (None, 1)


def test_learning_rate_setter_compiles_nothing_new():
    variables = make_variables(shapes=SMALL)
    opt = kopt.optimizers.SGD(0.1)
    grads = grads_for(variables)
    with compile_log() as first:
        opt.apply_gradients(zip(grads, variables))
    assert any(m.startswith("Compiling") for m in first)  # the log works here
    opt.learning_rate = 0.07  # warm any eager conversion the setter does
    opt.apply_gradients(zip(grads, variables))

    before = snapshot(variables)
    with compile_log() as log:
        opt.learning_rate = 0.05
        opt.apply_gradients(zip(grads, variables))
    assert log == []
    # ... and the new rate was used: plain SGD moves by -lr * g.
    for v, b, g in zip(variables, before, grads):
        np.testing.assert_allclose(v.numpy(), b - np.float32(0.05) * np.asarray(g), rtol=1e-6, atol=1e-6)
    assert step_cache_size(opt) in (None, 1)


def test_schedule_steps_compile_nothing_new():
    variables = make_variables(shapes=SMALL)
    schedule = Sched(0.1, 1, 0.5)
    opt = kopt.optimizers.SGD(schedule)
    grads = grads_for(variables)
    with compile_log() as first:
        opt.apply_gradients(zip(grads, variables))
    assert any(m.startswith("Compiling") for m in first)  # the log works here
    for step in range(1, 4):
        before = snapshot(variables)
        with compile_log() as log:
            opt.apply_gradients(zip(grads, variables))
        assert log == []
        lr = np.float32(schedule(step))  # the schedule is called with the pre-increment count
        for v, b, g in zip(variables, before, grads):
            np.testing.assert_allclose(v.numpy(), b - lr * np.asarray(g), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(float(opt.learning_rate), float(schedule(step + 1)), rtol=1e-6)


def test_minimize_second_call_compiles_nothing_new():
    variables = make_variables(shapes=SMALL)
    opt = kopt.optimizers.Adam(0.01)
    x, y = np.ones((4, 20), np.float32), np.zeros((4, 10), np.float32)
    with compile_log() as first:
        opt.minimize(dense_loss, variables, x, y)
    assert any(m.startswith("Compiling") for m in first)  # the log works here
    x2 = x + 1.0
    with compile_log() as log:
        opt.minimize(dense_loss, variables, x2, y)
    assert log == []


# --------------------------------------------------------------------------- learning_rate


def test_learning_rate_read_and_set_float():
    opt = kopt.optimizers.Adam(learning_rate=0.01)
    assert float(opt.learning_rate) == float(np.float32(0.01))  # readable before build
    opt.learning_rate = 0.02
    assert float(opt.learning_rate) == float(np.float32(0.02))
    variables = make_variables(shapes={"w": (3,)})
    run(opt, variables, 1)
    assert float(opt.learning_rate) == float(np.float32(0.02))
    opt.learning_rate = 0.05
    assert float(opt.learning_rate) == float(np.float32(0.05))
    assert opt.get_config()["learning_rate"] == 0.05


def test_setting_float_on_schedule_raises_type_error():
    schedule = Sched(0.1, 2, 0.5)
    opt = kopt.optimizers.SGD(learning_rate=schedule)
    variables = make_variables(shapes={"w": (3,)})
    run(opt, variables, 2)
    lr_before = float(opt.learning_rate)
    with pytest.raises(TypeError, match="learning_rate=0.05"):
        opt.learning_rate = 0.05
    assert float(opt.learning_rate) == lr_before
    assert opt.get_config()["learning_rate"] == kopt.schedules.serialize(schedule)


def test_setting_a_new_schedule_works():
    opt = kopt.optimizers.SGD(learning_rate=Sched(0.1, 2, 0.5))
    variables = make_variables(shapes={"w": (3,)})
    run(opt, variables, 2)
    new = Sched(0.3, 1, 0.9)
    opt.learning_rate = new
    np.testing.assert_allclose(float(opt.learning_rate), float(new(2)), rtol=1e-6)
    before = snapshot(variables)
    grads = grads_for(variables)
    opt.apply_gradients(zip(grads, variables))
    np.testing.assert_allclose(
        variables[0].numpy(), before[0] - np.float32(new(2)) * np.asarray(grads[0]), rtol=1e-6, atol=1e-6
    )
    assert opt.get_config()["learning_rate"] == kopt.schedules.serialize(new)
    # A float optimizer may switch to a schedule too.
    opt2 = kopt.optimizers.SGD(0.1)
    opt2.learning_rate = new
    np.testing.assert_allclose(float(opt2.learning_rate), float(new(0)), rtol=1e-6)


# --------------------------------------------------------------------------- minimize


def dense_loss(values, x, y):
    kernel, bias = values
    return jnp.mean(jnp.square(x @ kernel + bias[None, :] - y))


def test_minimize_returns_loss_and_updates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.standard_normal((16, 10)).astype(np.float32)
    shapes = {"kernel": (20, 10), "bias": (10,)}
    variables, twin_vars = make_variables(shapes=shapes), make_variables(shapes=shapes)
    opt, twin = kopt.optimizers.SGD(0.1, momentum=0.5), kopt.optimizers.SGD(0.1, momentum=0.5)

    value_and_grad = jax.jit(jax.value_and_grad(dense_loss))
    losses = []
    for step in range(3):
        expected_loss, grads = value_and_grad([v.value for v in twin_vars], x, y)
        twin.apply_gradients(zip(grads, twin_vars))
        loss = opt.minimize(dense_loss, variables, x, y)
        losses.append(float(loss))
        np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-6)
        assert int(opt.iterations) == step + 1
        assert_values_equal([v.value for v in variables], [v.value for v in twin_vars], atol=1e-6)
    assert losses[2] < losses[0]


# --------------------------------------------------------------------------- stateless_apply


def test_stateless_apply_in_jit_equals_apply_gradients():
    shapes = {"kernel": (20, 10), "bias": (10,), "big": (300, 256)}
    variables, twin_vars = make_variables(shapes=shapes), make_variables(shapes=shapes)
    opt = kopt.optimizers.AdamW(Sched(0.01, 2, 0.5), weight_decay=0.1, global_clipnorm=1.0)
    twin = kopt.optimizers.AdamW(Sched(0.01, 2, 0.5), weight_decay=0.1, global_clipnorm=1.0)
    opt.build(variables)
    step = jax.jit(opt.stateless_apply)
    for i in range(3):
        grads = grads_for(variables)
        new_values, new_state = step(opt.state, grads, [v.value for v in variables])
        opt.state = new_state
        for v, value in zip(variables, new_values):
            v.assign(value)
        twin.apply_gradients(zip(grads_for(twin_vars), twin_vars))
        assert int(kopt.functional.iteration_count(new_state)) == i + 1
        assert int(opt.iterations) == i + 1
        assert_values_equal([v.value for v in variables], [v.value for v in twin_vars])
        for a, b in zip(opt.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------- None and subsets

THREE = {"a": (20, 10), "b": (10,), "c": (300, 256)}


def _slots_of(opt, index, n_vars=3):
    """Entries of get_weights() that belong to variable `index` (slot-major layout)."""
    weights = opt.get_weights()
    return [weights[1 + s * n_vars + index] for s in range((len(weights) - 1) // n_vars)]


@pytest.mark.parametrize("mode,buckets", [("none_gradient", 0), ("subset", BUCKETS)])
def test_skipped_variables_and_slots_are_unchanged(mode, buckets):
    variables = make_variables(shapes=THREE)
    opt = kopt.optimizers.Adam(0.1, bucket_threshold=buckets)
    run(opt, variables, 1)  # slots are non-zero now
    before_values = snapshot(variables)
    before_slots = [_slots_of(opt, i) for i in range(3)]

    ga, _, gc = grads_for(variables)
    a, b, c = variables
    if mode == "none_gradient":   # Keras warns, naming the variable, and skips it
        with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['b'\]"):
            opt.apply_gradients([(ga, a), (None, b), (gc, c)])
    else:
        opt.apply_gradients([(gc, c), (ga, a)])  # a subset, in another order
    assert int(opt.iterations) == 2

    np.testing.assert_array_equal(b.numpy(), before_values[1])
    for new, old in zip(_slots_of(opt, 1), before_slots[1]):
        np.testing.assert_array_equal(new, old)
    for i in (0, 2):
        assert not np.array_equal(variables[i].numpy(), before_values[i])
        for new, old in zip(_slots_of(opt, i), before_slots[i]):
            assert not np.array_equal(new, old)

    # The updated variables match an optimizer that only ever saw [a, c].
    twin_all = make_variables(shapes=THREE)
    twin_vars = [twin_all[0], twin_all[2]]
    twin = kopt.optimizers.Adam(0.1, bucket_threshold=buckets)
    g = grads_for(twin_all)
    twin.apply_gradients(zip([g[0], g[2]], twin_vars))
    g = grads_for(twin_all)
    twin.apply_gradients(zip([g[0], g[2]], twin_vars))
    assert_values_equal([a.value, c.value], [v.value for v in twin_vars])


# --------------------------------------------------------------------------- configs


def config_cases():
    return [
        kopt.optimizers.SGD(learning_rate=0.2, momentum=0.5, nesterov=True, clipnorm=1.0, name="my_sgd"),
        kopt.optimizers.SGD(learning_rate=Sched(0.1, 100, 0.96, staircase=True), weight_decay=0.01),
        kopt.optimizers.RMSprop(
            learning_rate=0.003, rho=0.8, momentum=0.2, epsilon=1e-6, centered=True, global_clipnorm=2.0
        ),
        kopt.optimizers.Adam(
            learning_rate=Sched(1e-3, 1000, 0.5),
            beta_1=0.8,
            beta_2=0.99,
            epsilon=1e-6,
            amsgrad=True,
            clipvalue=0.5,
            weight_decay=0.001,
        ),
        kopt.optimizers.AdamW(learning_rate=0.002, weight_decay=0.01, beta_2=0.99, global_clipnorm=1.0),
    ]


@pytest.mark.parametrize("index", range(5))
def test_get_config_from_config_round_trip(index):
    opt = config_cases()[index]
    config = opt.get_config()
    json.dumps(config)  # a plain, JSON-serialisable dict
    params = set(inspect.signature(type(opt).__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)

    pristine = copy.deepcopy(config)
    clone = type(opt).from_config(config)
    assert config == pristine  # from_config does not mutate its input
    assert type(clone) is type(opt)
    assert clone.get_config() == config
    assert float(clone.learning_rate) == float(opt.learning_rate)


@pytest.mark.parametrize("index", range(5))
def test_serialize_deserialize(index):
    opt = config_cases()[index]
    data = kopt.optimizers.serialize(opt)
    assert data["class_name"] == type(opt).__name__
    data = json.loads(json.dumps(data))
    clone = kopt.optimizers.deserialize(data)
    assert type(clone) is type(opt)
    assert clone.get_config() == opt.get_config()
    assert kopt.optimizers.get(data).get_config() == opt.get_config()


def test_round_tripped_optimizer_steps_identically():
    opt = config_cases()[3]  # Adam with a schedule and every option
    clone = kopt.optimizers.deserialize(kopt.optimizers.serialize(opt))
    v1, v2 = make_variables(shapes=SMALL), make_variables(shapes=SMALL)
    run(opt, v1, 3)
    run(clone, v2, 3)
    for a, b in zip(v1, v2):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_constructor_accepts_every_keras_argument_with_its_default():
    keras = pytest.importorskip("keras")
    problems = []
    for name in ("SGD", "RMSprop", "Adam", "AdamW"):
        ours = inspect.signature(getattr(kopt.optimizers, name)).parameters
        theirs = inspect.signature(getattr(keras.optimizers, name)).parameters
        for arg, param in theirs.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if arg not in ours:
                problems.append(f"{name}: missing {arg}")
            elif ours[arg].default != param.default:
                problems.append(f"{name}: {arg} default {ours[arg].default!r} != Keras {param.default!r}")
    assert problems == []


# --------------------------------------------------------------------------- weight decay exclusion


@pytest.mark.parametrize("cls_name", ["AdamW", "SGD"])
def test_exclude_from_weight_decay(cls_name):
    cls = getattr(kopt.optimizers, cls_name)
    hyper = dict(learning_rate=0.1, momentum=0.5) if cls_name == "SGD" else dict(learning_rate=0.1)

    decayed_vars = make_variables(shapes=SMALL)
    run(cls(weight_decay=0.5, **hyper), decayed_vars, 3)
    plain_vars = make_variables(shapes=SMALL)
    plain = kopt.optimizers.Adam(**hyper) if cls_name == "AdamW" else kopt.optimizers.SGD(**hyper)
    run(plain, plain_vars, 3)
    assert not np.allclose(decayed_vars[1].numpy(), plain_vars[1].numpy(), rtol=1e-4, atol=1e-4)

    for how in ("var_list", "var_names"):
        variables = make_variables(shapes=SMALL)
        opt = cls(weight_decay=0.5, **hyper)
        if how == "var_list":
            opt.exclude_from_weight_decay(var_list=[variables[1]])
        else:
            opt.exclude_from_weight_decay(var_names=["^bi"])  # a regex, searched in the names
        run(opt, variables, 3)
        # kernel decays as usual; bias follows the run without decay.
        np.testing.assert_allclose(
            variables[0].numpy(), decayed_vars[0].numpy(), rtol=1e-7, atol=1e-7, err_msg=how
        )
        np.testing.assert_allclose(
            variables[1].numpy(), plain_vars[1].numpy(), rtol=1e-7, atol=1e-7, err_msg=how
        )


# --------------------------------------------------------------------------- Variable


def test_variable_api():
    initial = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = kopt.Variable(initial, name="w")
    assert isinstance(v.value, jax.Array)
    assert v.shape == (2, 3)
    assert v.dtype == jnp.float32
    assert v.name == "w"
    np.testing.assert_array_equal(v.numpy(), initial)
    assert isinstance(v.numpy(), np.ndarray)
    np.testing.assert_array_equal(np.asarray(v), initial)
    assert np.asarray(v).dtype == np.float32

    assert v.assign(np.ones((2, 3))) is v
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 3)))
    assert v.dtype == jnp.float32  # assign casts to the variable's dtype

    with pytest.raises(ValueError) as info:
        v.assign(np.zeros((3, 2)))
    message = str(info.value)
    assert "'w'" in message and "(3, 2)" in message and "(2, 3)" in message
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 3)))

    assert kopt.Variable([1, 2], dtype=jnp.float32).dtype == jnp.float32
    unnamed = kopt.Variable(np.zeros(3, np.float32))
    assert isinstance(unnamed.name, str) and unnamed.name
    assert unnamed.name != kopt.Variable(np.zeros(3, np.float32)).name


def test_value_held_by_the_user_survives_a_step():
    """The step consumes only buffers no one else holds: an array read from `v.value` and
    still referenced when the step runs is copied, not deleted (SPEC §5 ownership)."""
    initial = jnp.asarray(ONES)
    v = kopt.Variable(initial, name="kernel")
    opt = kopt.optimizers.SGD(0.1)
    old = v.value
    opt.apply_gradients([(ONES, v)])
    assert not old.is_deleted()
    np.testing.assert_array_equal(np.asarray(old), np.ones((20, 10)))
    np.testing.assert_allclose(np.asarray(v.value), np.ones((20, 10)) - np.float32(0.1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(initial), np.ones((20, 10)))  # the user's input survives


def test_unheld_buffer_is_updated_in_place():
    """When nothing but the Variable references its buffer, the donated step reuses it:
    no new allocation for the params (the benchmark's peak-memory row)."""
    v = kopt.Variable(np.ones((64, 64), np.float32), name="w")
    opt = kopt.optimizers.SGD(0.1, momentum=0.9)
    g = jnp.ones((64, 64))
    opt.apply_gradients([(g, v)])
    before = v._value.unsafe_buffer_pointer()
    opt.apply_gradients([(g, v)])
    assert v._value.unsafe_buffer_pointer() == before


def test_numpy_view_taken_before_a_step_keeps_the_old_values():
    """On CPU `v.numpy()` / `np.asarray(v)` may share memory with the device buffer. Such a
    view must never see the buffer reused by the donated step: it keeps the old values."""
    v = kopt.Variable(ONES, name="kernel")
    opt = kopt.optimizers.SGD(0.1)
    view, view2 = v.numpy(), np.asarray(v)
    for _ in range(2):
        opt.apply_gradients([(ONES, v)])
    np.testing.assert_array_equal(view, np.ones((20, 10)))
    np.testing.assert_array_equal(view2, np.ones((20, 10)))
    np.testing.assert_allclose(v.numpy(), np.full((20, 10), 0.8, np.float32), rtol=1e-6)


def test_np_array_of_variable_is_an_independent_copy():
    v = kopt.Variable(np.ones(3, np.float32), name="w")
    a = np.array(v)  # numpy's default copy=True must give a fresh, writeable array
    assert not np.shares_memory(a, v.numpy())
    a[0] = 5.0
    assert v.numpy()[0] == 1.0


def test_minimize_with_loss_scale_factor_takes_the_unscaled_step():
    def loss_fn(values, x):
        return jnp.sum((values[0] * x - 1.0) ** 2)

    x = jnp.asarray([0.5, 2.0, -1.0])
    results = []
    for factor in (None, 8.0):
        w = kopt.Variable(jnp.ones(3), name="w")
        opt = kopt.optimizers.SGD(0.1, loss_scale_factor=factor)
        losses = [float(opt.minimize(loss_fn, [w], x)) for _ in range(3)]
        results.append((losses, w.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6)
