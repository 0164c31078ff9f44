"""`WarmupCosineDecay`: linear warmup to a peak, then cosine decay to an end rate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative, check_steps, f32
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["WarmupCosineDecay"]


@register
class WarmupCosineDecay(LearningRateSchedule):
    r"""Linear warmup to a peak, then a cosine decay to an absolute end rate.

    With :math:`\eta_0` = `initial_learning_rate`, :math:`\eta_p` = `peak_learning_rate`,
    :math:`\eta_e` = `end_learning_rate`, :math:`W` = `warmup_steps`, :math:`T` =
    `decay_steps`:

    .. math::
        \eta(t) = \eta_0 + (\eta_p - \eta_0)\, t / W \quad (t < W), \qquad
        \eta(t) = \eta_e + (\eta_p - \eta_e)\,\tfrac12\bigl(1 + \cos(\pi \min(t - W, T) / T)\bigr)
        \quad (t \ge W)

    The decay starts after the warmup, so the schedule reaches :math:`\eta_e` at step
    :math:`W + T` and stays there. This is
    `CosineDecay(initial_learning_rate, decay_steps, alpha=end/peak, warmup_target=peak,
    warmup_steps=W)` with the end rate given as a rate rather than a fraction. (Note that
    optax's `warmup_cosine_decay_schedule` counts its `decay_steps` from step 0.)

    Args:
      peak_learning_rate: :math:`\eta_p`, a number >= 0.
      warmup_steps: :math:`W`, an integer >= 0.
      decay_steps: :math:`T`, an integer > 0.
      initial_learning_rate: :math:`\eta_0`, a number >= 0. Default 0.0.
      end_learning_rate: :math:`\eta_e`, a number >= 0. Default 0.0.
      name: kept in the config. Default "WarmupCosineDecay".

    Example:
      >>> sched = WarmupCosineDecay(1e-3, warmup_steps=100, decay_steps=900, end_learning_rate=1e-5)
      >>> round(float(sched(100)), 8), round(float(sched(1000)), 8)
      (0.001, 1e-05)

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017; Goyal et al., "Accurate, Large Minibatch SGD", 2017.
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        decay_steps,
        initial_learning_rate=0.0,
        end_learning_rate=0.0,
        name="WarmupCosineDecay",
    ):
        check_nonnegative("peak_learning_rate", peak_learning_rate)
        check_steps("warmup_steps", warmup_steps)
        check_steps("decay_steps", decay_steps, positive=True)
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_nonnegative("end_learning_rate", end_learning_rate)
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.initial_learning_rate = initial_learning_rate
        self.end_learning_rate = end_learning_rate
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        t = f32(step)
        lr0, peak, end = (f32(x) for x in (
            self.initial_learning_rate, self.peak_learning_rate, self.end_learning_rate))
        ramp = lr0 + (peak - lr0) * (t / f32(self.warmup_steps or 1))
        frac = jnp.clip((t - self.warmup_steps) / f32(self.decay_steps), 0.0, 1.0)
        decay = end + (peak - end) * (0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * frac)))
        return jnp.where(t < self.warmup_steps, ramp, decay)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "end_learning_rate": self.end_learning_rate,
            "name": self.name,
        }
