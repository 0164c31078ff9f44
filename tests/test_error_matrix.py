"""The error matrix of issue #8 section 1, as one table-driven test.

`tests/test_errors.py` already checks each misuse once on Adam and SGD. This table covers
every item of the issue's list again where that file does not reach:

- every optimizer of `tests/catalogue.py` (the constructor checks);
- `LossScaleOptimizer`, whose weights list and compiled step wrap an inner optimizer;
- the state layouts with a shared scalar (Nadam) and alternating slots (Ftrl);
- the functional guards (`skip_nonfinite`, `dynamic_loss_scale`) and transforms.

Each row checks the exception type, that the message names the argument, variable or
index and what was received, and that afterwards every optimizer's `get_weights()`,
learning rate, config and loss scale and every Variable's value are unchanged and still
readable (nothing was donated or half-written).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.functional.nonfinite import dynamic_loss_scale, skip_nonfinite
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from tests.catalogue import CATALOGUE

# The items of the issue's list; every one must have rows in the table.
UNKNOWN_ARG = "an unknown constructor argument"
NEGATIVE_LR = "a negative learning rate"
MOMENTUM = "momentum or ema_momentum outside [0, 1]"
CLIPS = "more than one clip option"
ACCUMULATION = "gradient_accumulation_steps < 2"
MALFORMED = "a malformed grads_and_vars"
ALL_NONE = "all gradients None"
GRAD_MISMATCH = "a gradient shape or dtype that does not match its variable"
NOT_BUILT_WITH = "variables the optimizer was not built with"
SET_WEIGHTS = "set_weights with the wrong length, shapes or dtypes"
UNKNOWN_NAME = "an unknown string identifier"
BAD_CONFIG = "a bad config dict"
IN_JIT = "a call from inside jit"
ISSUE_ITEMS = (UNKNOWN_ARG, NEGATIVE_LR, MOMENTUM, CLIPS, ACCUMULATION, MALFORMED, ALL_NONE,
               GRAD_MISMATCH, NOT_BUILT_WITH, SET_WEIGHTS, UNKNOWN_NAME, BAD_CONFIG, IN_JIT)
OTHER_ARGS = "other invalid arguments of the non-finite guards"

KERNEL, BIAS = (20, 10), (10,)


# --------------------------------------------------------------------------- context


def _dense(rng, prefix=""):
    return [kopt.Variable(rng.standard_normal(KERNEL).astype(np.float32), name=prefix + "kernel"),
            kopt.Variable(rng.standard_normal(BIAS).astype(np.float32), name=prefix + "bias")]


def _build_with_random_state(opt, variables, rng):
    """Build without compiling anything, then load non-trivial weights, so that
    "unchanged" is meaningful."""
    opt.build(variables)
    weights = []
    for w in opt.get_weights():
        if np.issubdtype(w.dtype, np.integer):
            weights.append(np.array(3, w.dtype))
        else:
            weights.append((np.abs(rng.standard_normal(w.shape)) + 0.5).astype(w.dtype))
    opt.set_weights(weights)


@pytest.fixture(scope="module")
def ctx():
    """Built once: every row must leave it as it was, which each row checks against the
    snapshot taken here."""
    rng = np.random.default_rng(0)
    c = types.SimpleNamespace()
    c.lso_vars, c.nadam_vars, c.ftrl_vars = _dense(rng), _dense(rng, "n_"), _dense(rng, "f_")
    c.lso = LossScaleOptimizer(kopt.optimizers.Adam(0.1), dynamic_growth_steps=5)
    c.nadam = kopt.optimizers.Nadam(0.01)
    c.ftrl = kopt.optimizers.Ftrl(0.05)
    _build_with_random_state(c.lso, c.lso_vars, rng)
    _build_with_random_state(c.nadam, c.nadam_vars, rng)
    _build_with_random_state(c.ftrl, c.ftrl_vars, rng)
    c.gk = rng.standard_normal(KERNEL).astype(np.float32)
    c.gb = rng.standard_normal(BIAS).astype(np.float32)
    c.stranger = kopt.Variable(np.zeros(BIAS, np.float32), name="stranger")
    c.before = _snapshot(c)
    return c


def _optimizers(c):
    return {"lso": (c.lso, c.lso_vars), "nadam": (c.nadam, c.nadam_vars),
            "ftrl": (c.ftrl, c.ftrl_vars)}


def _snapshot(c):
    out = {}
    for key, (opt, variables) in _optimizers(c).items():
        out[key] = dict(weights=[np.array(w) for w in opt.get_weights()],
                        values=[np.array(v.value) for v in variables],
                        lr=float(opt.learning_rate), config=opt.get_config())
    out["lso"]["scale"] = float(c.lso.dynamic_scale)
    out["lso"]["inner"] = [np.array(w) for w in c.lso.inner_optimizer.get_weights()]
    return out


def _assert_unchanged(c):
    after = _snapshot(c)
    for key, b in c.before.items():
        a = after[key]
        assert len(a["weights"]) == len(b["weights"]), key
        for i, (x, y) in enumerate(zip(a["weights"], b["weights"])):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y, err_msg=f"{key}: weight {i} changed")
        for x, y in zip(a["values"], b["values"]):
            np.testing.assert_array_equal(x, y, err_msg=f"{key}: a variable changed")
        assert a["lr"] == b["lr"] and a["config"] == b["config"], key
    assert after["lso"]["scale"] == c.before["lso"]["scale"]
    for x, y in zip(after["lso"]["inner"], c.before["lso"]["inner"]):
        np.testing.assert_array_equal(x, y)
    for _, variables in _optimizers(c).values():
        assert not any(v.value.is_deleted() for v in variables)
    for opt, _ in _optimizers(c).values():
        assert not any(x.is_deleted() for x in jax.tree.leaves(opt.state))


# --------------------------------------------------------------------------- the table


class Case(NamedTuple):
    item: str                       # which item of the issue's list
    id: str
    action: Callable[[Any], Any]
    error: type
    fragments: tuple[str, ...]      # each must appear in the message


def _with(weights, index, value):
    weights = list(weights)
    weights[index] = value
    return weights


def _registry_rows():
    rows = []
    for name, cls in sorted((e.name, e.cls) for e in CATALOGUE):
        params = inspect.signature(cls.__init__).parameters
        rows += [
            Case(UNKNOWN_ARG, f"{name}-unknown", lambda c, cls=cls: cls(learning_rat=0.1),
                 ValueError, ("learning_rat", "0.1")),
            Case(NEGATIVE_LR, f"{name}-negative-lr", lambda c, cls=cls: cls(learning_rate=-0.25),
                 ValueError, ("learning_rate", "-0.25")),
            Case(CLIPS, f"{name}-two-clips",
                 lambda c, cls=cls: cls(clipvalue=0.5, global_clipnorm=2.0),
                 ValueError, ("clipvalue=0.5", "global_clipnorm=2.0")),
            Case(ACCUMULATION, f"{name}-accumulation-0",
                 lambda c, cls=cls: cls(gradient_accumulation_steps=0),
                 ValueError, ("gradient_accumulation_steps", "0")),
            Case(MOMENTUM, f"{name}-ema_momentum-1.5",
                 lambda c, cls=cls: cls(use_ema=True, ema_momentum=1.5),
                 ValueError, ("ema_momentum", "1.5")),
        ]
        for arg in ("momentum", "beta_1", "beta_2", "rho"):
            if arg in params:
                for bad in (1.5, -0.1):
                    rows.append(Case(MOMENTUM, f"{name}-{arg}-{bad}",
                                     lambda c, cls=cls, arg=arg, bad=bad: cls(**{arg: bad}),
                                     ValueError, (arg, str(bad))))
    return rows


def _lso_build_other(c):
    LossScaleOptimizer(c.nadam).build(c.lso_vars)


def _lso_in_jit(c):
    jax.jit(lambda gk, gb: c.lso.apply_gradients(zip([gk, gb], c.lso_vars)))(c.gk, c.gb)


def _lso_minimize_in_jit(c):
    jax.jit(lambda: c.lso.minimize(lambda v: jnp.sum(v[1]), c.lso_vars))()


def _ftrl_in_grad(c):
    def f(x):
        c.ftrl.apply([x, c.gb], c.ftrl_vars)
        return jnp.sum(x)

    jax.grad(f)(jnp.asarray(c.gk))


def _nadam_in_vmap(c):
    jax.vmap(lambda g: c.nadam.apply_gradients([(g, c.nadam_vars[1])]))(jnp.stack([c.gb, c.gb]))


def _wrong_tree(c):
    tx = kopt.functional.adam(0.1)
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(3)})
    tx.update({"a": jnp.zeros(2)}, state)


def _lso_weights(c):
    return c.lso.get_weights()   # [iterations, step_counter, scale, m_k, m_b, v_k, v_b]


CASES = _registry_rows() + [
    # ---- constructor arguments of the loss-scale optimizer and the functional guards
    Case(UNKNOWN_ARG, "lso-unknown", lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), foo=3),
         ValueError, ("foo", "3")),
    Case(UNKNOWN_ARG, "lso-base-argument",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), clipnorm=1.0),
         ValueError, ("clipnorm=1.0", "inner")),
    Case(UNKNOWN_ARG, "lso-not-dynamic",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), dynamic=False),
         ValueError, ("dynamic=False", "loss_scale_factor")),
    Case(UNKNOWN_ARG, "functional-unknown", lambda c: kopt.functional.adam(0.1, bet_1=0.5),
         TypeError, ("bet_1",)),
    Case(NEGATIVE_LR, "functional-negative-lr", lambda c: kopt.functional.rmsprop(-1.0),
         ValueError, ("learning_rate", "-1")),
    Case(NEGATIVE_LR, "lso-set-negative-lr", lambda c: setattr(c.lso, "learning_rate", -0.5),
         ValueError, ("learning_rate", "-0.5")),
    Case(MOMENTUM, "functional-ema-momentum", lambda c: kopt.functional.ema(ema_momentum=-2.0),
         ValueError, ("ema_momentum", "-2.0")),
    Case(CLIPS, "functional-three-clips",
         lambda c: kopt.functional.adamw(clipnorm=1.0, clipvalue=1.0, global_clipnorm=1.0),
         ValueError, ("clipnorm=1.0", "clipvalue=1.0", "global_clipnorm=1.0")),
    Case(ACCUMULATION, "accumulation-negative",
         lambda c: kopt.optimizers.Nadam(gradient_accumulation_steps=-3),
         ValueError, ("gradient_accumulation_steps", "-3")),
    Case(ACCUMULATION, "accumulation-float",
         lambda c: kopt.optimizers.Ftrl(gradient_accumulation_steps=2.5),
         ValueError, ("gradient_accumulation_steps", "2.5")),
    Case(ACCUMULATION, "accumulation-bool",
         lambda c: kopt.optimizers.Adam(gradient_accumulation_steps=True),
         ValueError, ("gradient_accumulation_steps", "True")),
    Case(ACCUMULATION, "functional-accumulate-1",
         lambda c: kopt.functional.accumulate_gradients(kopt.functional.sgd(), 1),
         ValueError, ("gradient_accumulation_steps", "1")),
    Case(OTHER_ARGS, "lso-inner-not-an-optimizer", lambda c: LossScaleOptimizer("adam"),
         TypeError, ("inner_optimizer", "'adam'")),
    Case(OTHER_ARGS, "lso-initial-scale-zero",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), initial_scale=0.0),
         ValueError, ("initial_scale", "0.0")),
    Case(OTHER_ARGS, "lso-initial-scale-inf",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), initial_scale=float("inf")),
         ValueError, ("initial_scale", "inf")),
    Case(OTHER_ARGS, "lso-growth-steps-zero",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), dynamic_growth_steps=0),
         ValueError, ("dynamic_growth_steps", "0")),
    Case(OTHER_ARGS, "lso-growth-steps-float",
         lambda c: LossScaleOptimizer(kopt.optimizers.SGD(), dynamic_growth_steps=10.5),
         ValueError, ("dynamic_growth_steps", "10.5")),
    Case(OTHER_ARGS, "skip-nonfinite-inner", lambda c: skip_nonfinite(3),
         TypeError, ("inner", "3")),
    Case(OTHER_ARGS, "skip-nonfinite-max-consecutive",
         lambda c: skip_nonfinite(kopt.functional.sgd(), max_consecutive=0),
         ValueError, ("max_consecutive", "0")),
    Case(OTHER_ARGS, "dynamic-loss-scale-initial",
         lambda c: dynamic_loss_scale(kopt.functional.sgd(), initial_scale=-8),
         ValueError, ("initial_scale", "-8")),
    # ---- malformed grads_and_vars
    Case(MALFORMED, "lso-not-iterable", lambda c: c.lso.apply_gradients(7),
         TypeError, ("(gradient, variable)", "7")),
    Case(MALFORMED, "lso-triples", lambda c: c.lso.apply_gradients([(c.gk, c.lso_vars[0], 0)]),
         TypeError, ("(gradient, variable)", "Received")),
    Case(MALFORMED, "nadam-string", lambda c: c.nadam.apply_gradients("gv"),
         TypeError, ("(gradient, variable)", "'gv'")),
    Case(MALFORMED, "ftrl-dict", lambda c: c.ftrl.apply_gradients({"kernel": c.gk}),
         TypeError, ("(gradient, variable)", "'kernel'")),
    Case(MALFORMED, "lso-apply-count", lambda c: c.lso.apply([c.gk, c.gb, c.gb], c.lso_vars),
         ValueError, ("3 gradients", "2 variables")),
    Case(MALFORMED, "functional-wrong-tree", _wrong_tree, ValueError, ("structure", "'b'")),
    # ---- all gradients None
    Case(ALL_NONE, "lso-all-none",
         lambda c: c.lso.apply_gradients([(None, c.lso_vars[0]), (None, c.lso_vars[1])]),
         ValueError, ("kernel", "bias")),
    Case(ALL_NONE, "ftrl-all-none", lambda c: c.ftrl.apply([None, None], c.ftrl_vars),
         ValueError, ("f_kernel", "f_bias")),
    # ---- gradient shape or dtype
    Case(GRAD_MISMATCH, "lso-shape",
         lambda c: c.lso.apply_gradients(zip([c.gk, c.gk[:, 0]], c.lso_vars)),
         ValueError, ("'bias'", "(20,)", "(10,)")),
    Case(GRAD_MISMATCH, "lso-dtype",
         lambda c: c.lso.apply_gradients(zip([c.gk.astype(np.float16), c.gb], c.lso_vars)),
         ValueError, ("'kernel'", "float16", "float32")),
    Case(GRAD_MISMATCH, "lso-nonfinite-and-wrong-shape",
         lambda c: c.lso.apply_gradients(zip([c.gk * np.inf, c.gb[:3]], c.lso_vars)),
         ValueError, ("'bias'", "(3,)", "(10,)")),
    Case(GRAD_MISMATCH, "nadam-dtype-bfloat16",
         lambda c: c.nadam.apply([c.gk, jnp.asarray(c.gb, jnp.bfloat16)], c.nadam_vars),
         ValueError, ("'n_bias'", "bfloat16", "float32")),
    Case(GRAD_MISMATCH, "ftrl-shape-subset",
         lambda c: c.ftrl.apply_gradients([(c.gb[None, :], c.ftrl_vars[1])]),
         ValueError, ("'f_bias'", "(1, 10)", "(10,)")),
    Case(GRAD_MISMATCH, "nadam-python-list",
         lambda c: c.nadam.apply([c.gk, c.gb.tolist()], c.nadam_vars),
         TypeError, ("'n_bias'", "must be an array", "received list")),
    # ---- variables the optimizer was not built with
    Case(NOT_BUILT_WITH, "lso-stranger",
         lambda c: c.lso.apply_gradients([(c.gk, c.lso_vars[0]), (c.gb, c.stranger)]),
         ValueError, ("'stranger'", "'loss_scale_optimizer'")),
    Case(NOT_BUILT_WITH, "lso-rebuild", lambda c: c.lso.build(c.nadam_vars),
         ValueError, ("'loss_scale_optimizer'", "2 variables")),
    Case(NOT_BUILT_WITH, "lso-around-inner-built-elsewhere", _lso_build_other,
         ValueError, ("'nadam'", "2 variables")),
    Case(NOT_BUILT_WITH, "nadam-variables-of-ftrl",
         lambda c: c.nadam.apply(c.ftrl.get_weights()[1:3], c.ftrl_vars),
         ValueError, ("'f_kernel'", "'nadam'")),
    # ---- set_weights
    Case(SET_WEIGHTS, "lso-too-short", lambda c: c.lso.set_weights(_lso_weights(c)[:-2]),
         ValueError, ("7 arrays", "received 5")),
    Case(SET_WEIGHTS, "lso-inner-list", lambda c: c.lso.set_weights(c.lso.inner_optimizer.get_weights()),
         ValueError, ("7 arrays", "step_counter", "received 5")),
    Case(SET_WEIGHTS, "lso-shape-in-inner-part",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 4, np.zeros(11, np.float32))),
         ValueError, ("entry 4", "'bias'", "(11,)", "(10,)")),
    Case(SET_WEIGHTS, "lso-dtype-in-inner-part",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 6, np.full(BIAS, "x"))),
         ValueError, ("entry 6", "'bias'", "<U1")),
    Case(SET_WEIGHTS, "lso-iterations",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 0, np.zeros(2))),
         ValueError, ("entry 0", "(2,)")),
    Case(SET_WEIGHTS, "lso-step-counter-fraction",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 1, np.float32(0.5))),
         ValueError, ("entry 1", "step_counter", "0.5")),
    Case(SET_WEIGHTS, "lso-scale-negative",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 2, np.float32(-4.0))),
         ValueError, ("entry 2", "dynamic_scale", "-4.0")),
    Case(SET_WEIGHTS, "lso-scale-shape",
         lambda c: c.lso.set_weights(_with(_lso_weights(c), 2, np.ones(3, np.float32))),
         ValueError, ("entry 2", "dynamic_scale", "(3,)")),
    Case(SET_WEIGHTS, "nadam-scalar-shape",
         lambda c: c.nadam.set_weights(_with(c.nadam.get_weights(), 1, np.ones(2, np.float32))),
         ValueError, ("entry 1", "momentum_cache", "(2,)")),
    Case(SET_WEIGHTS, "nadam-complex",
         lambda c: c.nadam.set_weights(_with(c.nadam.get_weights(), 2, np.ones(KERNEL, np.complex64))),
         ValueError, ("entry 2", "'n_kernel'", "complex64")),
    Case(SET_WEIGHTS, "ftrl-by-variable-shape",   # [it, acc_k, lin_k, acc_b, lin_b]
         lambda c: c.ftrl.set_weights(_with(c.ftrl.get_weights(), 3, np.ones(KERNEL, np.float32))),
         ValueError, ("entry 3", "'f_bias'", "(20, 10)", "(10,)")),
    Case(SET_WEIGHTS, "ftrl-bool",
         lambda c: c.ftrl.set_weights(_with(c.ftrl.get_weights(), 4, np.ones(BIAS, bool))),
         ValueError, ("entry 4", "'f_bias'", "bool")),
    # ---- identifiers
    Case(UNKNOWN_NAME, "typo", lambda c: kopt.optimizers.get("nadma"),
         ValueError, ("'nadma'", "nadam", "ftrl")),
    Case(UNKNOWN_NAME, "empty", lambda c: kopt.optimizers.get(""), ValueError, ("''", "adam")),
    Case(UNKNOWN_NAME, "unknown-class-name",
         lambda c: kopt.optimizers.deserialize({"class_name": "Adamz", "config": {}}),
         ValueError, ("'Adamz'", "adam")),
    # ---- configs
    Case(BAD_CONFIG, "lso-no-inner", lambda c: LossScaleOptimizer.from_config({"initial_scale": 2.0}),
         ValueError, ("inner_optimizer", "initial_scale")),
    Case(BAD_CONFIG, "lso-unknown-inner",
         lambda c: LossScaleOptimizer.from_config({"inner_optimizer": {"class_name": "Nope"}}),
         ValueError, ("'Nope'",)),
    Case(BAD_CONFIG, "lso-bad-scale",
         lambda c: LossScaleOptimizer.from_config(
             {**c.lso.get_config(), "initial_scale": -1.0}),
         ValueError, ("initial_scale", "-1.0")),
    Case(BAD_CONFIG, "lso-unknown-key",
         lambda c: LossScaleOptimizer.from_config({**c.lso.get_config(), "scale": 2.0}),
         ValueError, ("scale", "2.0")),
    Case(BAD_CONFIG, "nadam-learning-rate-string",
         lambda c: kopt.optimizers.Nadam.from_config({"learning_rate": "fast"}),
         TypeError, ("learning_rate", "'fast'")),
    Case(BAD_CONFIG, "ftrl-config-not-a-dict",
         lambda c: kopt.optimizers.Ftrl.from_config([("learning_rate", 0.1)]),
         TypeError, ("dict", "learning_rate")),
    Case(BAD_CONFIG, "ftrl-bad-power",
         lambda c: kopt.optimizers.get({"class_name": "Ftrl",
                                        "config": {"learning_rate_power": 0.5}}),
         ValueError, ("learning_rate_power", "0.5")),
    # ---- inside JAX transformations
    Case(IN_JIT, "lso-apply-gradients-in-jit", _lso_in_jit, RuntimeError,
         ("kopt.functional", "stateless_apply")),
    Case(IN_JIT, "lso-minimize-in-jit", _lso_minimize_in_jit, RuntimeError, ("minimize",)),
    Case(IN_JIT, "ftrl-apply-in-grad", _ftrl_in_grad, RuntimeError, ("stateless_apply",)),
    Case(IN_JIT, "nadam-in-vmap", _nadam_in_vmap, RuntimeError, ("stateless_apply",)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.id}" for c in CASES])
def test_error_matrix(case, ctx):
    with pytest.raises(case.error) as info:
        case.action(ctx)
    message = str(info.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    _assert_unchanged(ctx)


def test_the_table_covers_every_item_of_the_issue():
    covered = {case.item for case in CASES}
    assert set(ISSUE_ITEMS) <= covered, set(ISSUE_ITEMS) - covered
    assert len({case.id for case in CASES}) == len(CASES)
