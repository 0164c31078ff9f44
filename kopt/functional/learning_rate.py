"""How a learning rate lives in functional state.

A float is stored as a float32 scalar in the state's `learning_rate` field and read back
on every update, so replacing it (`set_learning_rate`) never recompiles. A schedule, or
any callable `step -> lr`, is evaluated at the step count before it is incremented (as
Keras does); the field then holds the rate the next update will use, for reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax.numpy as jnp

__all__ = ["LearningRate", "as_learning_rate"]

LearningRate = Union[float, Callable[[Any], Any]]


class _Rate:
    def __init__(self, learning_rate):
        if callable(learning_rate):
            self.schedule = learning_rate
            self.constant = None
        else:
            try:
                value = float(learning_rate)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    "`learning_rate` must be a float, a schedule or a callable step -> lr. "
                    f"Received: learning_rate={learning_rate!r}"
                ) from e
            if not value >= 0:
                raise ValueError(
                    f"`learning_rate` must be a number >= 0. Received: learning_rate={learning_rate}"
                )
            self.schedule = None
            self.constant = value

    def initial(self):
        if self.schedule is None:
            return jnp.asarray(self.constant, jnp.float32)
        return jnp.asarray(self.schedule(jnp.zeros((), jnp.int32)), jnp.float32)

    def value(self, state, step=None):
        """The rate for the update at `step` (default `state.count`)."""
        if self.schedule is None:
            return state.learning_rate
        return jnp.asarray(self.schedule(state.count if step is None else step), jnp.float32)

    def next(self, state, new_count):
        """What to store in the state's `learning_rate` field after an update."""
        if self.schedule is None:
            return state.learning_rate
        return jnp.asarray(self.schedule(new_count), jnp.float32)


def as_learning_rate(learning_rate: LearningRate) -> _Rate:
    return _Rate(learning_rate)
