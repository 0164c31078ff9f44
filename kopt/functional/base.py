"""The transform protocol: `Transform(init, update)`, `chain`, `apply_updates`, state queries."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.learning_rate import learning_rate_source
from kopt.functional.validation import ArgumentTypeError, check_number

__all__ = [
    "Transform",
    "chain",
    "apply_updates",
    "iteration_count",
    "current_learning_rate",
    "set_learning_rate",
]

PyTree = Any


class Transform(NamedTuple):
    """A pair of pure functions, structurally an `optax.GradientTransformation`.

    `init(params) -> state` and
    `update(updates, state, params=None, **extra_args) -> (updates, state)`. As optax's
    `GradientTransformationExtraArgs`, every kopt `update` accepts extra keyword
    arguments; the transforms that wrap others (`chain`, `partition`, `skip_nonfinite`,
    ...) pass them on to inner transforms that accept them, and the others ignore them.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree]]


def _accepts_extra_args(tx) -> bool:
    """True if `tx.update` takes `**kwargs` (kopt transforms, optax's
    `GradientTransformationExtraArgs`)."""
    try:
        params = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in params)


def call_update(tx, updates, state, params=None, extra_args=None):
    """`tx.update(updates, state, params, **extra_args)`, dropping `extra_args` for a
    transform whose `update` does not take them (optax's `with_extra_args_support`)."""
    if extra_args and _accepts_extra_args(tx):
        return tx.update(updates, state, params, **extra_args)
    return tx.update(updates, state, params)


class ChainState(tuple):
    """The states of a `chain`, one per transform, in order (a plain tuple subclass)."""


jax.tree_util.register_pytree_node(
    ChainState, lambda s: (tuple(s), None), lambda _, children: ChainState(children)
)


def chain(*transforms: Transform) -> Transform:
    """Apply `transforms` in sequence; each one's output updates feed the next.

    Accepts kopt and optax transforms alike (anything with `init`/`update`).
    """
    for i, tx in enumerate(transforms):
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(
                f"chain() argument {i} is not a transform with init/update. Received: {tx!r}"
            )

    def init_fn(params):
        return ChainState(tx.init(params) for tx in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transforms received a state of type "
                f"{type(state).__name__}; make sure you called init first and pass its result."
            )
        new_states = []
        for tx, s in zip(transforms, state):
            updates, s = call_update(tx, updates, s, params, extra_args)
            new_states.append(s)
        return updates, ChainState(new_states)

    return Transform(init_fn, update_fn)


def wider_dtype(a, b):
    """`jnp.promote_types` under JAX's standard rules, whatever `jax_numpy_dtype_promotion`
    says (strict promotion refuses bfloat16 with float32)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(a, b)


def _add(p, u):
    if u is None:
        return p
    p = jnp.asarray(p)
    wide = wider_dtype(p.dtype, u.dtype)
    return (p.astype(wide) + u.astype(wide)).astype(p.dtype)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """`params + updates`, leaf by leaf, cast back to each param's dtype.

    A `None` update leaves its param unchanged.
    """
    return jax.tree.map(_add, params, updates, is_leaf=lambda x: x is None)


def _find_field(state, field):
    """Depth-first search for the first NamedTuple in `state` that has `field`."""
    if hasattr(state, "_fields") and field in state._fields:
        return state
    if isinstance(state, (tuple, list)):
        for s in state:
            found = _find_field(s, field)
            if found is not None:
                return found
    if isinstance(state, dict):
        for s in state.values():
            found = _find_field(s, field)
            if found is not None:
                return found
    return None


def iteration_count(state: PyTree) -> jax.Array:
    """The number of updates applied, read from the first `count` field in `state`."""
    found = _find_field(state, "count")
    if found is None:
        raise ValueError(
            "iteration_count: no `count` field found in the state. "
            f"Received a state of type {type(state).__name__}."
        )
    return found.count


def current_learning_rate(state: PyTree) -> jax.Array:
    """The learning rate the next `update` will use."""
    found = _find_field(state, "learning_rate")
    if found is None:
        raise ValueError(
            "current_learning_rate: no `learning_rate` field found in the state. "
            f"Received a state of type {type(state).__name__}."
        )
    return found.learning_rate


def _replace_field(state, field, value):
    """Replace the first `field` that `_find_field` would find; `(new_state, done)`."""
    if hasattr(state, "_fields") and field in state._fields:
        return state._replace(**{field: value}), True
    if isinstance(state, dict):
        out, done = {}, False
        for k, s in state.items():
            if not done:
                s, done = _replace_field(s, field, value)
            out[k] = s
        return type(state)(out), done
    if isinstance(state, (tuple, list)):
        out, done = [], False
        for s in state:
            if not done:
                s, done = _replace_field(s, field, value)
            out.append(s)
        if hasattr(state, "_fields"):
            return type(state)(*out), done
        return type(state)(out), done
    return state, False


def set_learning_rate(state: PyTree, learning_rate) -> PyTree:
    """Return `state` with a new constant learning rate; jitted steps do not recompile.

    Only for transforms built with a number as learning rate. A state whose rate comes
    from the transform on every update (a schedule or callable, or a jax array as
    `optax.inject_hyperparams` passes it) is refused with an `ArgumentTypeError`, both a
    ValueError and the TypeError Keras raises: the next update would overwrite the value.
    `learning_rate` is a number >= 0 (Python, numpy or 0-d jax); NaN and inf are refused.
    """
    if callable(learning_rate) and not isinstance(learning_rate, jax.Array):
        raise ArgumentTypeError(
            "set_learning_rate takes a number; to change a schedule, build a new transform. "
            f"Received: learning_rate={learning_rate!r}"
        )
    check_number("learning_rate", learning_rate, low=0,
                 message="`learning_rate` must be a number >= 0.")
    found = _find_field(state, "learning_rate")
    if found is None:
        raise ValueError("set_learning_rate: no `learning_rate` field found in the state.")
    source = learning_rate_source(found)
    if source == "schedule":
        raise ArgumentTypeError(
            "This optimizer was created with a `LearningRateSchedule` object as its "
            "`learning_rate` constructor argument, hence its learning rate is not settable. "
            f"The state of {type(found).__name__} comes from a transform built with a "
            "schedule or callable, which recomputes the rate on every update and would "
            "overwrite this value; build a new transform with the new schedule (or with a "
            f"number, to set it later). Received: learning_rate={learning_rate!r}"
        )
    if source == "array":
        raise ArgumentTypeError(
            f"The state of {type(found).__name__} comes from a transform built with a jax "
            "array as learning rate (as `optax.inject_hyperparams` builds it), which "
            "passes the rate on every update and would overwrite this value; change it "
            "where it is given (with inject_hyperparams: `state.hyperparams"
            "['learning_rate']`), or build the transform with a Python float. "
            f"Received: learning_rate={learning_rate!r}"
        )
    new, done = _replace_field(
        state, "learning_rate", jnp.asarray(learning_rate, found.learning_rate.dtype)
    )
    if not done:   # pragma: no cover - _find_field and _replace_field walk the same way
        raise ValueError("set_learning_rate: could not replace the `learning_rate` field.")
    return new


def by_slot(field: str, with_slot: Callable[[], Transform],
            without_slot: Callable[[], Transform], at_init: bool = True) -> Transform:
    """A transform whose state has the slot `field` or not, decided at `init`.

    For a hyperparameter that decides the state's structure (SGD's `momentum`: a slot
    only when non-zero) but arrives traced, as `optax.inject_hyperparams` passes it
    under `jit`: `init` runs the factory with the concrete value and picks the
    structure (`at_init`: whether it has the slot; True where the value is traced);
    `update` follows the structure of the state it is given. A momentum
    injected as 0 at `init` thus stays plain (changing it later has no effect); one
    injected non-zero can be changed, to 0 too, through the hyperparameters.
    """
    def update_fn(updates, state, params=None, **extra_args):
        tx = with_slot() if getattr(state, field, None) is not None else without_slot()
        return tx.update(updates, state, params, **extra_args)

    return Transform((with_slot if at_init else without_slot)().init, update_fn)
