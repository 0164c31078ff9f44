"""Keras 3's `InverseTimeDecay`."""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative, check_positive, f32, floor_div
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["InverseTimeDecay"]


@register
class InverseTimeDecay(LearningRateSchedule):
    r"""Inverse-time decay.

    .. math::
        \eta(t) = \frac{\eta_0}{1 + r\, t / T}
        \quad\text{or, with ``staircase``,}\quad
        \eta(t) = \frac{\eta_0}{1 + r \lfloor t / T \rfloor}

    Args:
      initial_learning_rate: :math:`\eta_0`, a number >= 0.
      decay_steps: :math:`T`, a number > 0.
      decay_rate: :math:`r`, a number >= 0.
      staircase: decay in discrete intervals. Default False.
      name: kept in the config. Default "InverseTimeDecay".

    Example:
      >>> sched = InverseTimeDecay(0.1, decay_steps=1.0, decay_rate=0.5)
      >>> round(float(sched(2)), 6)
      0.05

    Reference: `keras.optimizers.schedules.InverseTimeDecay` (Keras 3).
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        decay_rate,
        staircase=False,
        name="InverseTimeDecay",
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
        return f32(self.initial_learning_rate) / (1 + f32(self.decay_rate) * p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }
