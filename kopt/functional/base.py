"""The transform protocol: `Transform(init, update)`, `chain`, `apply_updates`, state queries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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

    `init(params) -> state` and `update(updates, state, params=None) -> (updates, state)`.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree]]


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

    def update_fn(updates, state, params=None):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transforms received a state of type "
                f"{type(state).__name__}; make sure you called init first and pass its result."
            )
        new_states = []
        for tx, s in zip(transforms, state):
            updates, s = tx.update(updates, s, params)
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

    Only for transforms built with a float learning rate: with a schedule, the stored
    value is recomputed from the step count on every update.
    """
    if callable(learning_rate):
        raise TypeError(
            "set_learning_rate takes a number; to change a schedule, build a new transform. "
            f"Received: {learning_rate!r}"
        )
    if float(learning_rate) < 0:
        raise ValueError(f"learning_rate must be >= 0. Received: learning_rate={learning_rate}")
    found = _find_field(state, "learning_rate")
    if found is None:
        raise ValueError("set_learning_rate: no `learning_rate` field found in the state.")
    new, done = _replace_field(
        state, "learning_rate", jnp.asarray(learning_rate, found.learning_rate.dtype)
    )
    if not done:   # pragma: no cover - _find_field and _replace_field walk the same way
        raise ValueError("set_learning_rate: could not replace the `learning_rate` field.")
    return new
