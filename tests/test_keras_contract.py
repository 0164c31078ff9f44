"""Keras 3's contract for the wrappers (issue 13, items 2, 3, 6, 9, 10; issue 14, wrappers).

Code written against `keras.optimizers.LossScaleOptimizer`, `MultiOptimizer` and Keras's
callbacks runs unchanged with kopt: each test states the Keras behaviour and, where
Keras raises, checks kopt against Keras's own message.

- `LossScaleOptimizer(MultiOptimizer(...))` before the MultiOptimizer is built, with the
  gradients unscaled once (the inner `loss_scale_factor`s become None, as in Keras).
- `MultiOptimizer` refuses a nested LossScaleOptimizer/MultiOptimizer at build, with
  Keras's message; `kopt.optimizers.get(None)` is None.
- `wrap(multi).optimizers`: Keras's `LearningRateScheduler` and `ReduceLROnPlateau`
  change each inner rate during a real `model.fit`.
- After `fit`/`train_on_batch` through `wrap(opt)`, `opt` itself holds the trained state.
- LossScaleOptimizer's unsupported arguments: Keras's text, plus kopt's details.
- `LossScaleOptimizer.set_weights` is all-or-nothing; an integer loss under `minimize`
  is a TypeError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.optimizers import SGD, LossScaleOptimizer, MultiOptimizer, OptimizerMap

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("kopt.interop.keras needs KERAS_BACKEND=jax", allow_module_level=True)

import kopt.interop.keras as kopt_keras  # noqa: E402


@pytest.fixture
def keras_promotion():
    # Keras's layers broadcast biases and mix Python scalars: standard JAX semantics.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def message_of(fn) -> str:
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


# ----------------------------------------------------------------- item 2: LSO(Multi)
@pytest.mark.parametrize("built_first", [False, True])
def test_loss_scale_optimizer_around_a_multi_optimizer_unscales_once(built_first):
    sgd = SGD(0.1)
    multi = MultiOptimizer(OptimizerMap(sgd), loss_scale_factor=5.0)
    assert sgd.loss_scale_factor == 5.0   # as Keras: the multi's factor is the inner one's
    w = kopt.Variable(jnp.asarray(2.0), name="w")
    if built_first:
        multi.build([w])
    lso = LossScaleOptimizer(multi, initial_scale=10.0)
    # As Keras: the LossScaleOptimizer turns the loss scaling of what it wraps off.
    assert multi.loss_scale_factor is None and sgd.loss_scale_factor is None
    # A gradient of 10.0 taken on the loss scaled by 10: the true gradient is 1.0.
    lso.apply_gradients([(jnp.asarray(10.0), w)])
    np.testing.assert_allclose(float(w.value), 2.0 - 0.1 * 1.0, rtol=1e-6)
    assert int(lso.iterations) == 1 and int(sgd.iterations) == 1
    # A non-finite step is skipped and halves the scale, through the inner partition.
    lso.apply_gradients([(jnp.asarray(jnp.inf), w)])
    np.testing.assert_allclose(float(w.value), 1.9, rtol=1e-6)
    assert float(lso.dynamic_scale) == 5.0 and int(lso.iterations) == 1
    # The inner optimizer's rate stays live through both wrappers.
    sgd.learning_rate = 1.0
    lso.apply_gradients([(jnp.asarray(5.0), w)])
    np.testing.assert_allclose(float(w.value), 1.9 - 1.0, rtol=1e-6)


def test_multi_optimizer_factor_reaches_optimizers_met_at_build():
    """A callable map meets its optimizers at build; the factor is set on them then."""
    sgd = SGD(0.1, loss_scale_factor=3.0)
    multi = MultiOptimizer(lambda v: sgd, loss_scale_factor=None)
    lso = LossScaleOptimizer(multi, initial_scale=10.0)
    w = kopt.Variable(jnp.asarray(2.0), name="w")
    lso.apply_gradients([(jnp.asarray(10.0), w)])
    assert sgd.loss_scale_factor is None
    np.testing.assert_allclose(float(w.value), 1.9, rtol=1e-6)
    # Setting the multi's factor later reaches the built inner optimizer's step too.
    multi.loss_scale_factor = 2.0
    assert sgd.loss_scale_factor == 2.0
    multi.apply_gradients([(jnp.asarray(2.0), w)])
    np.testing.assert_allclose(float(w.value), 1.9 - 0.1, rtol=1e-6)


# ----------------------------------------------------------------- item 6: get, nesting
def test_get_none_is_none_as_keras():
    assert keras.optimizers.get(None) is None
    assert kopt.optimizers.get(None) is None


@pytest.mark.parametrize("nested", ["lso", "multi"])
def test_nested_wrapper_fails_at_build_with_keras_message(nested):
    def keras_nested():
        inner = keras.optimizers.SGD()
        if nested == "lso":
            return keras.optimizers.LossScaleOptimizer(inner)
        return keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(inner))

    def kopt_nested():
        inner = SGD(0.1)
        if nested == "lso":
            return LossScaleOptimizer(inner)
        return MultiOptimizer(OptimizerMap(inner))

    theirs = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(keras_nested()))
    ours = MultiOptimizer(OptimizerMap(kopt_nested()))   # as Keras: accepted until build
    keras_text = message_of(lambda: theirs.build([keras.Variable(np.ones(2, np.float32))]))
    with pytest.raises(ValueError) as info:
        ours.build([kopt.Variable(jnp.ones(2), name="w")])
    assert keras_text in str(info.value)
    assert "'w'" in str(info.value)   # and kopt's details
    assert not ours.built
    # Assigning one into an OptimizerMap fails at once, in both.
    keras_text = message_of(lambda: keras.optimizers.OptimizerMap(keras.optimizers.SGD()).
                            __setitem__("x", keras_nested()))
    with pytest.raises(ValueError) as info:
        OptimizerMap(SGD(0.1))["x"] = kopt_nested()
    assert keras_text in str(info.value)


# ----------------------------------------------------------------- item 3: LR callbacks
def _multi_model(around=None):
    init = keras.initializers.GlorotUniform(seed=0)
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(4, name="enc", kernel_initializer=init),
        keras.layers.Dense(1, name="head", kernel_initializer=init),
    ])
    fast, slow = SGD(0.1, name="fast"), SGD(0.01, name="slow")
    multi = MultiOptimizer(OptimizerMap(slow, {".*/enc/.*": fast}))
    wrapped = kopt_keras.wrap(multi if around is None else around(multi))
    model.compile(loss="mse", optimizer=wrapped)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    return model, wrapped, (fast, slow), x, y


@pytest.mark.parametrize("around", [None, LossScaleOptimizer], ids=["multi", "lso-multi"])
@pytest.mark.parametrize("callback", ["LearningRateScheduler", "ReduceLROnPlateau"])
def test_keras_lr_callbacks_change_each_inner_rate(keras_promotion, callback, around):
    model, wrapped, (fast, slow), x, y = _multi_model(around)
    assert [o.name for o in wrapped.optimizers] == ["fast", "slow"]
    if callback == "LearningRateScheduler":
        cb = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch == 1 else lr)
    else:   # no epoch can beat the first by 1e9: one halving after epoch 1 (patience 1)
        cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5,
                                               patience=1, min_delta=1e9)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 2
    rates = [float(o.learning_rate) for o in wrapped.optimizers]
    np.testing.assert_allclose(rates, [0.05, 0.005], rtol=1e-6)
    # The kopt optimizers themselves, and the state Keras trained with, have the new rates.
    np.testing.assert_allclose([float(fast.learning_rate), float(slow.learning_rate)],
                               [0.05, 0.005], rtol=1e-6)
    assert int(fast.iterations) == 4


def test_lr_scheduler_rate_is_the_one_the_next_epoch_trains_with(keras_promotion):
    """The halved rates reach Keras's compiled step: the second epoch's update of every
    kernel is what the new rates give."""
    model, wrapped, (fast, slow), x, y = _multi_model()
    cb = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.0 if epoch == 1 else lr)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = [np.array(v.value) for v in model.trainable_variables]
    model.fit(x, y, epochs=2, initial_epoch=1, batch_size=16, verbose=0, callbacks=[cb])
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, np.array(v.value))   # rate 0.0: nothing moved
    assert int(fast.iterations) == 2


def test_single_wrapped_optimizer_has_no_optimizers():
    import copy
    assert not hasattr(kopt_keras.wrap(SGD(0.1)), "optimizers")
    view = kopt_keras.wrap(MultiOptimizer(OptimizerMap(SGD(0.1)))).optimizers[0]
    assert copy.copy(view).name == "sgd"
    with pytest.raises(AttributeError, match="Only `learning_rate`"):
        view.momentum = 0.5
    assert not hasattr(keras.optimizers.SGD(0.1), "optimizers")


# ----------------------------------------------------------------- item 9: opt readable
def _leaves_equal(opt, wrapped):
    """`opt`'s state, leaf by leaf, is what the Keras optimizer variables hold."""
    keras_values = [np.array(v.value) for v in wrapped.variables[1:]]   # after `iteration`
    ours = [np.array(x) for x in jax.tree.leaves(opt.state)]
    assert len(ours) == len(keras_values)
    for a, b in zip(ours, keras_values):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [lambda: kopt.optimizers.Adam(0.1),
                                  lambda: LossScaleOptimizer(kopt.optimizers.Adam(0.1))],
                         ids=["adam", "lso"])
def test_wrapped_optimizer_stays_readable_after_fit_and_train_on_batch(keras_promotion, make):
    opt = make()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    wrapped = kopt_keras.wrap(opt)
    model.compile(loss="mse", optimizer=wrapped)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3)
    y = np.ones((8, 1), np.float32)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert int(opt.iterations) == 4 == int(wrapped.iterations.value)
    weights = opt.get_weights()
    assert int(weights[0]) == 4
    assert any(np.abs(w).sum() > 0 for w in weights[1:])   # trained slots, not the initial zeros
    _leaves_equal(opt, wrapped)
    for step in range(5, 8):
        model.train_on_batch(x, y)
        assert int(opt.iterations) == step
        assert int(opt.get_weights()[0]) == step
        _leaves_equal(opt, wrapped)
    # A later fit continues from there, and opt follows again.
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert int(opt.iterations) == 9
    _leaves_equal(opt, wrapped)


def test_opt_follows_a_model_loaded_from_disk(keras_promotion, tmp_path):
    opt = kopt.optimizers.Adam(0.1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer=kopt_keras.wrap(opt))
    x, y = np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)
    model.fit(x, y, epochs=3, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    inner = loaded.optimizer._kopt
    assert int(inner.iterations) == 3
    for a, b in zip(inner.get_weights(), opt.get_weights()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- item 10: LSO arguments
@pytest.mark.parametrize("kwargs", [
    {"clipnorm": 1.0}, {"use_ema": True}, {"loss_scale_factor": 2.0},
    {"gradient_accumulation_steps": 2}, {"dynamic": False}, {"bogus": 1, "other": 2},
], ids=lambda k: ",".join(k))
def test_loss_scale_optimizer_unsupported_arguments_have_keras_text(kwargs):
    keras_text = message_of(
        lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), **kwargs))
    with pytest.raises(ValueError) as info:
        LossScaleOptimizer(SGD(0.1), **kwargs)
    assert keras_text in str(info.value)
    if "dynamic" not in kwargs:   # kopt's details: the value received
        key = next(iter(kwargs))
        assert f"{key}={kwargs[key]!r}" in str(info.value)
    # Keras's old configs carry these at their defaults: accepted, as Keras.
    LossScaleOptimizer(SGD(0.1), clipnorm=None, use_ema=False, ema_momentum=0.99)


# ----------------------------------------------------------------- issue 14: all-or-nothing
def _trained_lso():
    w = kopt.Variable(jnp.asarray([1.0, -2.0]), name="w")
    lso = LossScaleOptimizer(kopt.optimizers.Adam(0.1), initial_scale=8.0,
                             dynamic_growth_steps=100)
    for g in ([0.5, 1.0], [1.0, -1.0], [jnp.inf, 0.0]):
        lso.apply_gradients([(jnp.asarray(g), w)])
    return lso, w


@pytest.mark.parametrize("entry,value,text", [
    (1, np.int64(2**31), "step_counter"),
    (1, -1, "step_counter"),
    (1, 1.5, "step_counter"),
    (2, 1e39, "float32"),
    (2, np.float64(1e-50), "float32"),
    (2, np.nan, "dynamic_scale"),
    (2, -4.0, "dynamic_scale"),
    (2, np.inf, "dynamic_scale"),
])
def test_loss_scale_set_weights_is_all_or_nothing(entry, value, text):
    lso, _ = _trained_lso()
    before = lso.get_weights()
    good = [np.array(w) for w in before]
    good[0] = np.asarray(7, np.int32)   # a change the inner optimizer would accept
    bad = list(good)
    bad[entry] = np.asarray(value)
    with pytest.raises(ValueError, match=text):
        lso.set_weights(bad)
    after = lso.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert int(lso.iterations) == int(before[0])
    # The valid list loads in full.
    lso.set_weights(good)
    assert int(lso.iterations) == 7
    for a, b in zip(lso.get_weights(), good):
        np.testing.assert_array_equal(a, b)


def test_loss_scale_minimize_refuses_an_integer_loss():
    lso, w = _trained_lso()
    before, state = w.numpy(), lso.get_weights()
    with pytest.raises(TypeError, match="floating-point.*int32"):
        lso.minimize(lambda vs: jnp.sum(vs[0]).astype(jnp.int32), [w])
    np.testing.assert_array_equal(w.numpy(), before)
    for a, b in zip(lso.get_weights(), state):
        np.testing.assert_array_equal(a, b)
    # A float loss still steps.
    lso.minimize(lambda vs: jnp.sum(vs[0] ** 2), [w])
    assert int(lso.iterations) == int(state[0]) + 1


@pytest.mark.parametrize("make", [
    lambda: LossScaleOptimizer(SGD(0.1)),
    lambda: MultiOptimizer(OptimizerMap(SGD(0.1))),
    lambda: kopt.optimizers.Optimizer.from_transform(kopt.functional.sgd(0.1)),
], ids=["lso", "multi", "transform"])
def test_set_weights_on_an_unbuilt_wrapper_has_keras_text(make):
    keras_text = message_of(lambda: keras.optimizers.SGD(0.1).set_weights([np.zeros(())]))
    with pytest.raises(ValueError) as info:
        make().set_weights([np.zeros((), np.int32)])
    assert keras_text in str(info.value)


def test_wrapped_loss_scale_optimizer_scales_the_loss_in_fit(keras_promotion):
    """Keras's trainer differentiates `optimizer.scale_loss(loss)`: through `wrap`, a kopt
    LossScaleOptimizer's dynamic scale, so `fit` takes the steps Keras's own
    LossScaleOptimizer takes (before, the gradients were divided by a scale the loss was
    never multiplied by)."""
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2)
    y = x @ np.asarray([[1.0], [-2.0]], np.float32)

    def train(optimizer):
        model = keras.Sequential([keras.Input((2,)),
                                  keras.layers.Dense(1, kernel_initializer="ones")])
        model.compile(loss="mse", optimizer=optimizer)
        model.fit(x, y, epochs=5, batch_size=8, verbose=0)
        return [np.array(v.value) for v in model.trainable_variables]

    lso = LossScaleOptimizer(SGD(0.1), initial_scale=1024.0, dynamic_growth_steps=2)
    ours = train(kopt_keras.wrap(lso))
    theirs_opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=1024.0, dynamic_growth_steps=2)
    theirs = train(theirs_opt)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert float(lso.dynamic_scale) == float(theirs_opt.dynamic_scale.value) == 4096.0
    assert int(lso.iterations) == 5


def _trained_multi_and_transform():
    w = kopt.Variable(jnp.asarray([1.0, -2.0]), name="w")
    multi = MultiOptimizer(OptimizerMap(SGD(0.1, momentum=0.9)))
    u = kopt.Variable(jnp.asarray([3.0, 4.0]), name="u")
    tx = kopt.optimizers.Optimizer.from_transform(kopt.functional.sgd(0.1, momentum=0.9))
    for g in ([0.5, 1.0], [1.0, -1.0]):
        multi.apply_gradients([(jnp.asarray(g), w)])
        tx.apply_gradients([(jnp.asarray(g), u)])
    return multi, tx


@pytest.mark.parametrize("count", [np.int64(2**31), -1, np.nan, np.inf, 2.5, np.zeros(2)],
                         ids=["2**31", "-1", "nan", "inf", "2.5", "vector"])
def test_wrapper_set_weights_refuses_a_bad_count_and_changes_nothing(count):
    for opt in _trained_multi_and_transform():
        before = opt.get_weights()
        bad = [np.asarray(count)] + [np.array(w) + 1 for w in before[1:]]
        with pytest.raises(ValueError, match="entry 0 must be the iteration count"):
            opt.set_weights(bad)
        for a, b in zip(opt.get_weights(), before):
            np.testing.assert_array_equal(a, b)
        assert int(opt.iterations) == 2


def test_transform_optimizer_set_weights_copies_its_input():
    _, tx = _trained_multi_and_transform()
    weights = [np.array(w) for w in tx.get_weights()]
    weights[0] = np.asarray(2**31 - 1)   # the largest count int32 holds
    tx.set_weights(weights)
    assert int(tx.iterations) == 2**31 - 1
    loaded = [np.array(w) for w in tx.get_weights()]
    for w in weights[1:]:
        w += np.asarray(100, w.dtype)   # later writes to the arrays handed in do not reach the state
    for a, b in zip(tx.get_weights(), loaded):
        np.testing.assert_array_equal(a, b)


def test_multi_optimizer_misuse_has_keras_type_and_text():
    """issue 13, item 10: the same exception type as Keras, Keras's text in the message."""
    k_sgd, sgd = keras.optimizers.SGD(), SGD(0.1)
    k_map, our_map = (keras.optimizers.OptimizerMap(k_sgd, {"a.*": keras.optimizers.SGD()}),
                      OptimizerMap(sgd, {"a.*": SGD(0.1)}))
    keras_multi = keras.optimizers.MultiOptimizer(k_map)
    our_multi = MultiOptimizer(our_map)
    pairs = [
        (lambda: keras_multi.learning_rate, lambda: our_multi.learning_rate),
        (lambda: setattr(keras_multi, "learning_rate", 0.1),
         lambda: setattr(our_multi, "learning_rate", 0.1)),
        (lambda: keras.optimizers.OptimizerMap("sgd"), lambda: OptimizerMap("sgd")),
        (lambda: k_map.__setitem__("b", "sgd"), lambda: our_map.__setitem__("b", "sgd")),
        (lambda: k_map.__setitem__(3, k_sgd), lambda: our_map.__setitem__(3, sgd)),
    ]
    for theirs, ours in pairs:
        with pytest.raises(Exception) as keras_info:
            theirs()
        with pytest.raises(type(keras_info.value)) as info:
            ours()
        assert str(keras_info.value) in str(info.value)
    # Texts that hold the optimizer or a regex match: Keras's sentence, kopt's objects.
    k_map["ab.*"], our_map["ab.*"] = keras.optimizers.SGD(), SGD(0.1)
    with pytest.raises(ValueError, match="Multiple optimizers assigned to variable abc"):
        our_map["abc"]
    with pytest.raises(ValueError, match="Multiple optimizers assigned to variable abc"):
        k_map["abc"]
    for m in (k_map, our_map):
        with pytest.raises(ValueError, match=r"'ab\.\*' already exists in the OptimizerMap with"):
            m["ab.*"] = m["ab.*"]


def test_wrapper_stateless_apply_misuse_has_keras_text():
    variables = [keras.Variable(np.ones(3, np.float32))]
    values, grads = [v.value for v in variables], [np.ones(3, np.float32)]
    ours, theirs = kopt_keras.wrap(SGD(0.1)), keras.optimizers.SGD(0.1)
    # Unbuilt: Keras's sentence, with our class name.
    keras_text = message_of(lambda: theirs.stateless_apply([], grads, values))
    with pytest.raises(ValueError) as info:
        ours.stateless_apply([], grads, values)
    assert keras_text.replace("SGD", "KoptOptimizer") in str(info.value)
    # Built, with the wrong number of optimizer variables or of trainable values.
    ours.build(variables)
    theirs.build(variables)
    for opt_vars, train in (([], values), (None, values + values)):
        def call(o, opt_vars=opt_vars, train=train):
            return o.stateless_apply([v.value for v in o.variables] if opt_vars is None
                                     else opt_vars, grads, train)
        keras_text = message_of(lambda: call(theirs))
        with pytest.raises(ValueError) as info:
            call(ours)
        sentence = keras_text.replace("SGD", "KoptOptimizer").split(". Received")[0]
        assert sentence in str(info.value)
        assert str(len(train) if opt_vars is None else 0) in str(info.value)


@pytest.mark.parametrize("wrapper", ["multi", "lso-multi", "lso"])
def test_keras_form_stateless_apply_of_the_wrappers_equals_eager_steps(wrapper):
    """Keras's guide "Writing a training loop from scratch in JAX": the values of
    `optimizer.variables` in, `(trainable values, optimizer values)` out, under jit."""
    def make():
        adam, sgd = kopt.optimizers.Adam(0.1), SGD(0.1, momentum=0.9)
        multi = MultiOptimizer(OptimizerMap(sgd, {"enc.*": adam}))
        opt = {"multi": multi, "lso-multi": LossScaleOptimizer(multi, initial_scale=4.0),
               "lso": LossScaleOptimizer(adam, initial_scale=4.0)}[wrapper]
        variables = [kopt.Variable(jnp.ones(3), name="enc/kernel"),
                     kopt.Variable(jnp.full((2,), 2.0), name="head/kernel")]
        if wrapper == "lso":
            variables = variables[:1]
        opt.build(variables)
        return opt, variables

    eager, eager_vars = make()
    ours, our_vars = make()
    step = jax.jit(ours.stateless_apply)
    opt_values = [v.value for v in ours.variables]
    values = [v.value for v in our_vars]
    for k in range(3):
        grads = [jnp.full(v.shape, 0.5 * (k + 1)) for v in our_vars]
        eager.apply_gradients(zip(grads, eager_vars))
        values, opt_values = step(opt_values, grads, values)
    for v, x in zip(eager_vars, values):
        np.testing.assert_allclose(np.asarray(x), v.numpy(), rtol=1e-6)
    assert len(opt_values) == len(eager.variables)
    for a, b in zip(opt_values, eager.variables):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-6)
    assert int(ours.iterations) == 0   # stateless: nothing on the optimizer changed


def test_wrapper_steps_never_delete_an_inner_state_the_user_holds():
    sgd = SGD(0.1, momentum=0.9)
    multi = MultiOptimizer(OptimizerMap(sgd))
    lso = LossScaleOptimizer(multi, initial_scale=2.0)
    w = kopt.Variable(jnp.ones(3), name="w")
    lso.apply_gradients([(jnp.ones(3), w)])
    held = sgd.state   # handed out by the inner optimizer
    snapshot = [np.array(x) for x in jax.tree.leaves(held)]
    lso.apply_gradients([(jnp.ones(3), w)])
    multi.apply_gradients([(jnp.ones(3), w)])
    for x, s in zip(jax.tree.leaves(held), snapshot):
        np.testing.assert_array_equal(np.asarray(x), s)   # still readable, unchanged
    assert int(sgd.iterations) == 3
