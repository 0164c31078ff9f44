"""Decoupled weight decay as in Keras 3: `var <- var - var * weight_decay * lr`, before the step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.learning_rate import LearningRate, as_learning_rate
from kopt.functional.validation import check_number

__all__ = ["add_decayed_weights", "resolve_mask", "validate_weight_decay"]


def validate_weight_decay(weight_decay, name: str = "weight_decay"):
    """None, or a finite number >= 0 (Python, numpy or jax scalar)."""
    check_number(name, weight_decay, low=0, allow_none=True,
                 message=f"`{name}` must be >= 0.")


def resolve_mask(mask, params, treedef):
    """A flat tuple of Python bools, one per leaf: True where weight decay applies.

    `mask` is None (decay everything), a pytree of bools like `params`, or a callable
    `params -> pytree of bools`.
    """
    n = treedef.num_leaves
    if mask is None:
        return (True,) * n
    if callable(mask):
        if params is None:
            raise ValueError("A callable weight_decay_mask needs `params` in update().")
        mask = mask(params)
    try:
        flat = treedef.flatten_up_to(mask)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"weight_decay_mask must have the structure of params ({treedef}). Received: {mask!r}"
        ) from e
    return tuple(bool(m) for m in flat)


class DecayState(NamedTuple):
    count: jax.Array           # shape=(), int32: updates seen
    learning_rate: jax.Array   # shape=(), float32: learning rate of the next update


def add_decayed_weights(weight_decay: float, learning_rate: LearningRate = 1.0,
                        mask=None) -> Transform:
    """Add `-param * weight_decay * lr` to the updates, leaf by leaf, where `mask` allows.

    For use in `chain` before an optimizer's own update. kopt's optimizers already take
    `weight_decay=` and `weight_decay_mask=` and apply exactly this, in Keras's order.
    """
    validate_weight_decay(weight_decay)
    lr = as_learning_rate(learning_rate)

    def init_fn(params):
        del params
        return lr.mark(DecayState(jnp.zeros((), jnp.int32), lr.initial()))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("add_decayed_weights needs `params`: call update(updates, state, params).")
        leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        rate = lr.value(state)
        use = resolve_mask(mask, params, treedef)
        out = [
            (u - (p * weight_decay * rate.astype(p.dtype)).astype(u.dtype)) if m else u
            for u, p, m in zip(leaves, p_leaves, use)
        ]
        count = state.count + 1
        return jax.tree.unflatten(treedef, out), state._replace(
            count=count, learning_rate=lr.next(state, count))

    return Transform(init_fn, update_fn)
