"""A constant learning rate, as a schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["Constant"]


@register
class Constant(LearningRateSchedule):
    r"""The same rate at every step.

    .. math::
        \eta(t) = \eta

    Useful as a piece of `JoinSchedules`, or to give an optimizer a schedule (which then
    cannot be set to a float) whose rate is fixed.

    Args:
      learning_rate: :math:`\eta`, a number >= 0.
      name: kept in the config. Default "Constant".

    Example:
      >>> float(Constant(0.01)(1234)) == float(jnp.float32(0.01))
      True

    Reference: `optax.constant_schedule`.
    """

    def __init__(self, learning_rate, name="Constant"):
        check_nonnegative("learning_rate", learning_rate)
        self.learning_rate = learning_rate
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        return jnp.full(jnp.shape(step), self.learning_rate, jnp.float32)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "name": self.name}
