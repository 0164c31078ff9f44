"""Keras 3's `CosineDecayRestarts` (SGDR)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kopt.schedules._util import (
    check_nonnegative,
    check_positive,
    check_unit_interval,
    f32,
    floor_div,
)
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["CosineDecayRestarts"]


@register
class CosineDecayRestarts(LearningRateSchedule):
    r"""Cosine decay with warm restarts.

    Period :math:`i = 0, 1, \dots` lasts :math:`T_i = T\,m_t^{\,i}` steps and starts at
    :math:`\eta_0\, m_m^{\,i}`. With :math:`f \in [0, 1)` the fraction of the current period
    done at step :math:`t`:

    .. math::
        \eta(t) = \eta_0 \Bigl((1 - \alpha)\, m_m^{\,i}\, \tfrac12\bigl(1 + \cos(\pi f)\bigr)
        + \alpha\Bigr)

    where :math:`T` = `first_decay_steps`, :math:`m_t` = `t_mul`, :math:`m_m` = `m_mul`.

    Args:
      initial_learning_rate: :math:`\eta_0`, a number >= 0.
      first_decay_steps: :math:`T`, the length of the first period, a number > 0.
      t_mul: each period is `t_mul` times longer than the last, a number > 0. Default 2.0.
      m_mul: each period starts `m_mul` times lower than the last, a number >= 0.
        Default 1.0.
      alpha: the minimum rate as a fraction of `initial_learning_rate`, in [0, 1].
        Default 0.0.
      name: kept in the config. Default "SGDRDecay".

    Example:
      >>> sched = CosineDecayRestarts(0.1, first_decay_steps=100)
      >>> [round(float(sched(t)), 6) for t in (0, 50, 100)]  # restarts at step 100
      [0.1, 0.05, 0.1]

    Reference: `keras.optimizers.schedules.CosineDecayRestarts` (Keras 3); Loshchilov &
    Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    def __init__(
        self,
        initial_learning_rate,
        first_decay_steps,
        t_mul=2.0,
        m_mul=1.0,
        alpha=0.0,
        name="SGDRDecay",
    ):
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_positive("first_decay_steps", first_decay_steps)
        check_positive("t_mul", t_mul)
        check_nonnegative("m_mul", m_mul)
        check_unit_interval("alpha", alpha)
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self.t_mul = t_mul
        self.m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        t, first = f32(step), f32(self.first_decay_steps)
        frac = t / first
        t_mul, alpha = f32(self.t_mul), f32(self.alpha)
        if np.float32(self.t_mul) == 1.0:
            restart = floor_div(t, first)
            frac = frac - restart
        else:
            # Periods 0..i-1 last (1 - t_mul**i) / (1 - t_mul) first periods together.
            def done(i):
                return (1.0 - jnp.power(t_mul, i)) / (1.0 - t_mul)

            restart = jnp.floor(jnp.log(1.0 - frac * (1.0 - t_mul)) / jnp.log(t_mul))
            # The logarithm can land one ulp on the wrong side of a restart; compare in steps.
            restart = jnp.where(first * done(restart + 1) <= t, restart + 1, restart)
            restart = jnp.where(first * done(restart) > t, restart - 1, restart)
            frac = (frac - done(restart)) / jnp.power(t_mul, restart)
        cosine = 0.5 * jnp.power(f32(self.m_mul), restart) * (
            1.0 + jnp.cos(jnp.float32(math.pi) * frac))
        return f32(self.initial_learning_rate) * ((1 - alpha) * cosine + alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }
