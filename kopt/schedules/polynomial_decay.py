"""Keras 3's `PolynomialDecay`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative, check_positive, f32, floor_div
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["PolynomialDecay"]


@register
class PolynomialDecay(LearningRateSchedule):
    r"""Polynomial decay from `initial_learning_rate` to `end_learning_rate`.

    .. math::
        \eta(t) = (\eta_0 - \eta_T)\,\Bigl(1 - \frac{\min(t, T)}{T}\Bigr)^{p} + \eta_T

    With `cycle=True` the decay restarts: :math:`T` is replaced by
    :math:`T \lceil t / T \rceil` (by :math:`T` at :math:`t = 0`) and :math:`t` is not
    clipped.

    Args:
      initial_learning_rate: :math:`\eta_0`, a number >= 0.
      decay_steps: :math:`T`, a number > 0.
      end_learning_rate: :math:`\eta_T`, a number >= 0. Default 0.0001.
      power: :math:`p`, a number >= 0. Default 1.0 (linear).
      cycle: restart the decay every `decay_steps`. Default False.
      name: kept in the config. Default "PolynomialDecay".

    Example:
      >>> sched = PolynomialDecay(0.1, decay_steps=10000, end_learning_rate=0.01, power=0.5)
      >>> round(float(sched(10000)), 6)
      0.01

    Reference: `keras.optimizers.schedules.PolynomialDecay` (Keras 3).
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        end_learning_rate=0.0001,
        power=1.0,
        cycle=False,
        name="PolynomialDecay",
    ):
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_positive("decay_steps", decay_steps)
        check_nonnegative("end_learning_rate", end_learning_rate)
        check_nonnegative("power", power)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        t, period = f32(step), f32(self.decay_steps)
        if self.cycle:
            # ceil(t / T), the first multiple of T at or after t (T itself at t = 0).
            period = period * jnp.where(t == 0, 1.0, -floor_div(-t, period))
        else:
            t = jnp.minimum(t, period)
        end = f32(self.end_learning_rate)
        scale = f32(self.initial_learning_rate) - end
        # t <= period, but XLA's division can overshoot 1 by an ulp: keep 1 - p >= 0.
        p = jnp.minimum(t / period, 1.0)
        return scale * jnp.power(1 - p, f32(self.power)) + end

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }
