"""Keras 3's `ExponentialDecay`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative, check_positive, f32, floor_div
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["ExponentialDecay"]


@register
class ExponentialDecay(LearningRateSchedule):
    r"""Exponential decay.

    .. math::
        \eta(t) = \eta_0 \, r^{\,t / T}
        \quad\text{or, with ``staircase``,}\quad
        \eta(t) = \eta_0 \, r^{\lfloor t / T \rfloor}

    where :math:`\eta_0` is `initial_learning_rate`, :math:`r` is `decay_rate` and
    :math:`T` is `decay_steps`.

    Args:
      initial_learning_rate: the rate at step 0, a number >= 0.
      decay_steps: steps per decay period, a number > 0.
      decay_rate: the factor applied per period, a number >= 0.
      staircase: decay in discrete intervals. Default False.
      name: kept in the config. Default "ExponentialDecay".

    Example:
      >>> sched = ExponentialDecay(1e-2, decay_steps=10000, decay_rate=0.9)
      >>> round(float(sched(10000)), 6)
      0.009

    Reference: `keras.optimizers.schedules.ExponentialDecay` (Keras 3).
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        decay_rate,
        staircase=False,
        name="ExponentialDecay",
    ):
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_positive("decay_steps", decay_steps)
        check_nonnegative("decay_rate", decay_rate)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        t, period = f32(step), f32(self.decay_steps)
        p = floor_div(t, period) if self.staircase else t / period
        return f32(self.initial_learning_rate) * jnp.power(f32(self.decay_rate), p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }
