"""Bad input to the stateful facade (SPEC sections 2 and 4), table-driven.

Every case checks the exception type, that the message names the offending argument,
variable or index and what was received, and that afterwards the optimizers' weights,
learning rates and the variables' values are unchanged and still readable (nothing was
donated or half-written).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt

Sched = kopt.optimizers.schedules.ExponentialDecay


# --------------------------------------------------------------------------- fixtures


def _random_weights(opt, seed):
    """A full get_weights()-style list with non-zero slots, so "unchanged" is meaningful."""
    rng = np.random.default_rng(seed)
    weights = opt.get_weights()
    return [np.array(3, np.int64)] + [
        np.abs(rng.standard_normal(w.shape)).astype(np.float32) for w in weights[1:]
    ]


@pytest.fixture
def ctx():
    """A built Adam (float learning rate) and a built SGD with a schedule, each over its own
    [kernel, bias], with random state; plus gradients and a stranger Variable.

    They are built with `build` + `set_weights`, so no step is compiled unless a test runs one.
    """
    rng = np.random.default_rng(0)

    def dense():
        return [
            kopt.Variable(rng.standard_normal((20, 10)).astype(np.float32), name="kernel"),
            kopt.Variable(rng.standard_normal((10,)).astype(np.float32), name="bias"),
        ]

    variables = dense()
    opt = kopt.optimizers.Adam(learning_rate=0.1)
    opt.build(variables)
    opt.set_weights(_random_weights(opt, 1))

    sched_vars = dense()
    sched_opt = kopt.optimizers.SGD(learning_rate=Sched(0.1, 10, 0.5), momentum=0.9)
    sched_opt.build(sched_vars)
    sched_opt.set_weights(_random_weights(sched_opt, 2))

    c = types.SimpleNamespace(
        opt=opt,
        variables=variables,
        kernel=variables[0],
        bias=variables[1],
        sched_opt=sched_opt,
        sched_vars=sched_vars,
        gk=rng.standard_normal((20, 10)).astype(np.float32),
        gb=rng.standard_normal((10,)).astype(np.float32),
        stranger=kopt.Variable(np.zeros((10,), np.float32), name="stranger"),
    )
    c.before = _snapshot(c)
    return c


def _snapshot(c):
    out = {}
    for key, opt, variables in (("opt", c.opt, c.variables), ("sched", c.sched_opt, c.sched_vars)):
        out[key] = dict(
            weights=[np.array(w) for w in opt.get_weights()],
            values=[np.array(v.value) for v in variables],
            lr=float(opt.learning_rate),
            config=opt.get_config(),
        )
    return out


def assert_unchanged(c):
    """Weights, learning rates, configs and variable values are as before and readable."""
    after = _snapshot(c)
    for key in ("opt", "sched"):
        b, a = c.before[key], after[key]
        assert len(a["weights"]) == len(b["weights"])
        for i, (x, y) in enumerate(zip(a["weights"], b["weights"])):
            np.testing.assert_array_equal(x, y, err_msg=f"{key} weight {i} changed")
        for x, y in zip(a["values"], b["values"]):
            np.testing.assert_array_equal(x, y, err_msg=f"{key} variable changed")
        assert a["lr"] == b["lr"]
        assert a["config"] == b["config"]
    for v in c.variables + c.sched_vars:
        assert not v.value.is_deleted()


# --------------------------------------------------------------------------- the table


class Case(NamedTuple):
    id: str
    action: Callable[[Any], Any]
    error: type
    fragments: tuple[str, ...]  # each must appear in the message


def _replace(seq, index, value):
    seq = list(seq)
    seq[index] = value
    return seq


def _in_jit(c):
    jax.jit(lambda gk, gb: c.opt.apply_gradients(zip([gk, gb], c.variables)))(c.gk, c.gb)


def _in_grad(c):
    def f(x):
        c.opt.apply_gradients([(x, c.kernel)])
        return jnp.sum(x)

    jax.grad(f)(jnp.asarray(c.gk))


def _in_vmap(c):
    jax.vmap(lambda g: c.opt.apply([g, c.gb], c.variables))(jnp.stack([c.gk, c.gk]))


def _minimize_in_jit(c):
    loss = lambda values: jnp.sum(jnp.square(values[0])) + jnp.sum(jnp.square(values[1]))
    jax.jit(lambda: c.opt.minimize(loss, c.variables))()


def _set_weights_before_build(c):
    fresh = kopt.optimizers.Adam()
    try:
        fresh.set_weights([np.array(1)])
    finally:
        assert not fresh.built and fresh.get_weights() == []


def _apply_raw_arrays_unbuilt(c):
    fresh = kopt.optimizers.Adam()
    try:
        fresh.apply_gradients([(c.gb, jnp.zeros((10,), jnp.float32))])
    finally:
        assert not fresh.built and int(fresh.iterations) == 0


CASES = [
    # ---- constructor arguments
    Case(
        "unknown_argument", lambda c: kopt.optimizers.Adam(learning_rate=0.1, foo=3), ValueError, ("foo", "3")
    ),
    Case("legacy_lr_argument", lambda c: kopt.optimizers.SGD(lr=0.1), ValueError, ("lr", "learning_rate")),
    Case(
        "negative_learning_rate",
        lambda c: kopt.optimizers.Adam(learning_rate=-1.0),
        ValueError,
        ("learning_rate", "-1"),
    ),
    Case(
        "negative_learning_rate_sgd",
        lambda c: kopt.optimizers.SGD(learning_rate=-0.5),
        ValueError,
        ("learning_rate", "-0.5"),
    ),
    Case(
        "sgd_momentum_above_one", lambda c: kopt.optimizers.SGD(momentum=1.5), ValueError, ("momentum", "1.5")
    ),
    Case(
        "sgd_momentum_negative",
        lambda c: kopt.optimizers.SGD(momentum=-0.1),
        ValueError,
        ("momentum", "-0.1"),
    ),
    Case(
        "rmsprop_momentum_above_one",
        lambda c: kopt.optimizers.RMSprop(momentum=2.0),
        ValueError,
        ("momentum", "2.0"),
    ),
    Case(
        "rmsprop_momentum_negative",
        lambda c: kopt.optimizers.RMSprop(momentum=-0.5),
        ValueError,
        ("momentum", "-0.5"),
    ),
    Case(
        "adam_beta_1_out_of_range", lambda c: kopt.optimizers.Adam(beta_1=1.5), ValueError, ("beta_1", "1.5")
    ),
    Case(
        "negative_weight_decay",
        lambda c: kopt.optimizers.Adam(weight_decay=-0.1),
        ValueError,
        ("weight_decay", "-0.1"),
    ),
    Case(
        "clipnorm_and_clipvalue",
        lambda c: kopt.optimizers.Adam(clipnorm=1.0, clipvalue=0.5),
        ValueError,
        ("clipnorm=1.0", "clipvalue=0.5"),
    ),
    Case(
        "clipnorm_and_global_clipnorm",
        lambda c: kopt.optimizers.SGD(clipnorm=1.0, global_clipnorm=2.0),
        ValueError,
        ("clipnorm=1.0", "global_clipnorm=2.0"),
    ),
    Case(
        "all_three_clips",
        lambda c: kopt.optimizers.RMSprop(clipnorm=1.0, clipvalue=2.0, global_clipnorm=3.0),
        ValueError,
        ("clipnorm", "clipvalue", "global_clipnorm"),
    ),
    Case(
        "gradient_accumulation_steps_below_two",
        lambda c: kopt.optimizers.Adam(gradient_accumulation_steps=1),
        ValueError,
        ("gradient_accumulation_steps",),
    ),
    # ---- learning-rate setter
    Case(
        "set_negative_learning_rate",
        lambda c: setattr(c.opt, "learning_rate", -0.1),
        ValueError,
        ("learning_rate", "-0.1"),
    ),
    Case(
        "set_float_on_schedule",
        lambda c: setattr(c.sched_opt, "learning_rate", 0.25),
        TypeError,
        ("schedule", "learning_rate=0.25"),
    ),
    # ---- malformed grads_and_vars
    Case(
        "grads_and_vars_not_iterable",
        lambda c: c.opt.apply_gradients(5),
        TypeError,
        ("(gradient, variable)", "5"),
    ),
    Case(
        "grads_and_vars_singletons",
        lambda c: c.opt.apply_gradients(zip([c.gk, c.gb])),
        TypeError,
        ("(gradient, variable)", "Received"),
    ),
    Case(
        "grads_and_vars_triples",
        lambda c: c.opt.apply_gradients([(c.gk, c.kernel, 1)]),
        TypeError,
        ("(gradient, variable)", "Received"),
    ),
    Case(
        "grads_and_vars_flat_list",
        lambda c: c.opt.apply_gradients([c.gk, c.gb]),
        TypeError,
        ("(gradient, variable)", "Received"),
    ),
    Case(
        "apply_count_mismatch",
        lambda c: c.opt.apply([c.gk], c.variables),
        ValueError,
        ("1 gradients", "2 variables"),
    ),
    Case("raw_arrays_instead_of_variables", _apply_raw_arrays_unbuilt, TypeError, ("entry 0", "Variable")),
    # ---- gradients
    Case(
        "all_gradients_none",
        lambda c: c.opt.apply_gradients([(None, c.kernel), (None, c.bias)]),
        ValueError,
        ("kernel", "bias"),
    ),
    Case(
        "gradient_shape_mismatch",
        lambda c: c.opt.apply_gradients([(c.gk, c.kernel), (c.gk[0, :5], c.bias)]),
        ValueError,
        ("'bias'", "(5,)", "(10,)"),
    ),
    Case(
        "gradient_shape_transposed",
        lambda c: c.opt.apply_gradients([(c.gk.T, c.kernel), (c.gb, c.bias)]),
        ValueError,
        ("'kernel'", "(10, 20)", "(20, 10)"),
    ),
    Case(
        "gradient_dtype_float16",
        lambda c: c.opt.apply_gradients([(c.gk, c.kernel), (c.gb.astype(np.float16), c.bias)]),
        ValueError,
        ("'bias'", "float16", "float32"),
    ),
    Case(
        "gradient_dtype_int32",
        lambda c: c.opt.apply_gradients([(c.gk.astype(np.int32), c.kernel), (c.gb, c.bias)]),
        ValueError,
        ("'kernel'", "int32", "float32"),
    ),
    Case(
        "variable_not_built_with",
        lambda c: c.opt.apply_gradients([(c.gk, c.kernel), (c.gb, c.stranger)]),
        ValueError,
        ("'stranger'",),
    ),
    Case(
        "variables_of_another_optimizer",
        lambda c: c.opt.apply_gradients(zip([c.gk, c.gb], c.sched_vars)),
        ValueError,
        ("'kernel'", "'adam'"),
    ),
    # ---- set_weights
    Case(
        "set_weights_too_short",
        lambda c: c.opt.set_weights(c.opt.get_weights()[:-1]),
        ValueError,
        ("5", "received 4"),
    ),
    Case(
        "set_weights_too_long",
        lambda c: c.opt.set_weights(c.opt.get_weights() + [np.zeros(10)]),
        ValueError,
        ("5", "received 6"),
    ),
    Case(
        "set_weights_wrong_shape",
        lambda c: c.opt.set_weights(_replace(c.opt.get_weights(), 2, np.zeros(11))),
        ValueError,
        ("entry 2", "'bias'", "(11,)", "(10,)"),
    ),
    Case(
        "set_weights_wrong_iterations",
        lambda c: c.opt.set_weights(_replace(c.opt.get_weights(), 0, np.zeros(3))),
        ValueError,
        ("entry 0", "(3,)"),
    ),
    Case("set_weights_not_a_list", lambda c: c.opt.set_weights(np.zeros(5)), TypeError, ("list", "ndarray")),
    Case("set_weights_before_build", _set_weights_before_build, ValueError, ("build",)),
    # ---- identifiers and configs
    Case(
        "unknown_identifier",
        lambda c: kopt.optimizers.get("adamz"),
        ValueError,
        ("adamz", "adam", "sgd", "rmsprop", "adamw"),
    ),
    Case("identifier_of_wrong_type", lambda c: kopt.optimizers.get(42), ValueError, ("42",)),
    Case(
        "config_unknown_key",
        lambda c: kopt.optimizers.get({"class_name": "Adam", "config": {"bogus": 1}}),
        ValueError,
        ("bogus",),
    ),
    Case(
        "config_without_class_name",
        lambda c: kopt.optimizers.get({"config": {}}),
        ValueError,
        ("class_name",),
    ),
    Case(
        "config_unknown_class",
        lambda c: kopt.optimizers.get({"class_name": "Nope", "config": {}}),
        ValueError,
        ("Nope", "adam"),
    ),
    Case(
        "config_inner_not_a_dict",
        lambda c: kopt.optimizers.deserialize({"class_name": "Adam", "config": 3}),
        ValueError,
        ("config", "3"),
    ),
    Case(
        "from_config_bad_value",
        lambda c: kopt.optimizers.SGD.from_config({"momentum": 7.0}),
        ValueError,
        ("momentum", "7.0"),
    ),
    Case(
        "from_config_unknown_schedule",
        lambda c: kopt.optimizers.Adam.from_config({"learning_rate": {"class_name": "Nope", "config": {}}}),
        ValueError,
        ("Nope",),
    ),
    # ---- inside JAX transformations
    Case("apply_gradients_in_jit", _in_jit, RuntimeError, ("kopt.functional", "stateless_apply")),
    Case("apply_gradients_in_grad", _in_grad, RuntimeError, ("kopt.functional", "stateless_apply")),
    Case("apply_in_vmap", _in_vmap, RuntimeError, ("kopt.functional", "stateless_apply")),
    Case("minimize_in_jit", _minimize_in_jit, RuntimeError, ("minimize",)),
    # ---- rebuilding
    Case(
        "rebuild_with_other_variables", lambda c: c.opt.build(c.sched_vars), ValueError, ("'adam'", "rebuilt")
    ),
    Case(
        "rebuild_with_superset",
        lambda c: c.opt.build(c.variables + [c.stranger]),
        ValueError,
        ("'adam'", "2 variables"),
    ),
    Case(
        "minimize_with_other_variables",
        lambda c: c.opt.minimize(lambda values: jnp.sum(values[0]), c.sched_vars),
        ValueError,
        ("variables",),
    ),
    Case(
        "exclude_after_build",
        lambda c: c.opt.exclude_from_weight_decay(var_names=["bias"]),
        ValueError,
        ("exclude_from_weight_decay", "built"),
    ),
    Case("state_with_wrong_structure", lambda c: setattr(c.opt, "state", (1, 2)), ValueError, ("structure",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_error(case, ctx):
    with pytest.raises(case.error) as info:
        case.action(ctx)
    message = str(info.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert_unchanged(ctx)


def test_set_weights_names_the_first_mismatch(ctx):
    weights = ctx.opt.get_weights()
    weights[2] = np.zeros(11)  # bias/m
    weights[3] = np.zeros((3, 3))  # kernel/v
    with pytest.raises(ValueError) as info:
        ctx.opt.set_weights(weights)
    assert "entry 2" in str(info.value) and "entry 3" not in str(info.value)
    assert_unchanged(ctx)


def test_optimizer_still_steps_correctly_after_errors(ctx):
    """After every apply-time error above, a valid step gives exactly what an optimizer that
    never saw an error gives from the same state."""
    for case in CASES:
        if case.id.startswith(
            ("grads_", "gradient_", "all_gradients", "variable", "apply_", "set_weights_w")
        ):
            with pytest.raises(case.error):
                case.action(ctx)
    assert_unchanged(ctx)

    twin_vars = [kopt.Variable(v.numpy(), name=v.name) for v in ctx.variables]
    twin = kopt.optimizers.Adam(learning_rate=0.1)
    twin.build(twin_vars)
    twin.set_weights(ctx.opt.get_weights())

    ctx.opt.apply_gradients(zip([ctx.gk, ctx.gb], ctx.variables))
    twin.apply_gradients(zip([ctx.gk, ctx.gb], twin_vars))
    assert int(ctx.opt.iterations) == int(twin.iterations) == 4
    for a, b in zip(ctx.variables, twin_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(ctx.opt.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_duplicate_variable_in_grads_and_vars(ctx):
    k = ctx.kernel
    try:
        ctx.opt.apply_gradients([(ctx.gk, k), (2.0 * ctx.gk, k), (ctx.gb, ctx.bias)])
    except ValueError as e:
        assert "'kernel'" in str(e)
        assert_unchanged(ctx)
        return
    # No error: then neither gradient may be dropped (it must equal one step on their sum).
    twin_vars = [kopt.Variable(x, name=n) for x, n in zip(ctx.before["opt"]["values"], ("kernel", "bias"))]
    twin = kopt.optimizers.Adam(learning_rate=0.1)
    twin.build(twin_vars)
    twin.set_weights(ctx.before["opt"]["weights"])
    twin.apply_gradients(zip([3.0 * ctx.gk, ctx.gb], twin_vars))
    np.testing.assert_allclose(k.numpy(), twin_vars[0].numpy(), rtol=1e-6, atol=1e-6)
