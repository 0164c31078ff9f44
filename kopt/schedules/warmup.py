"""`LinearWarmup`: a linear ramp in front of any schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import (
    check_nonnegative,
    check_rate_or_schedule,
    check_steps,
    evaluate,
    f32,
    nested_config,
    nested_from_config,
    shift,
)
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["LinearWarmup"]


@register
class LinearWarmup(LearningRateSchedule):
    r"""Linear warmup to a schedule's starting rate, then the schedule, shifted.

    With :math:`s` the wrapped `schedule`, :math:`W` = `warmup_steps` and
    :math:`\eta_0` = `initial_learning_rate`:

    .. math::
        \eta(t) = \eta_0 + \bigl(s(0) - \eta_0\bigr)\, t / W \quad (t < W), \qquad
        \eta(t) = s(t - W) \quad (t \ge W)

    The wrapped schedule starts after the warmup: its step 0 is the optimizer's step
    :math:`W`, so the warmup does not eat into its decay. (Keras's
    `CosineDecay(warmup_target=..., warmup_steps=...)` counts the same way.)

    Args:
      schedule: the schedule to warm up into, or a number >= 0 (a constant rate).
      warmup_steps: :math:`W`, an integer >= 0.
      initial_learning_rate: :math:`\eta_0`, the rate at step 0, a number >= 0.
        Default 0.0.
      name: kept in the config. Default "LinearWarmup".

    Example:
      >>> from kopt.schedules import CosineDecay
      >>> sched = LinearWarmup(CosineDecay(0.1, decay_steps=1000), warmup_steps=100)
      >>> round(float(sched(50)), 6), round(float(sched(100)), 6), float(sched(1100))
      (0.05, 0.1, 0.0)

    Reference: Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    2017 (gradual warmup).
    """

    def __init__(self, schedule, warmup_steps, initial_learning_rate=0.0, name="LinearWarmup"):
        check_rate_or_schedule("schedule", schedule)
        check_steps("warmup_steps", warmup_steps)
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.initial_learning_rate = initial_learning_rate
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        lr0 = f32(self.initial_learning_rate)
        target = evaluate(self.schedule, jnp.zeros((), step.dtype))
        ramp = (target - lr0) * (f32(step) / f32(self.warmup_steps or 1)) + lr0
        after = evaluate(self.schedule, shift(step, self.warmup_steps))
        return jnp.where(step < self.warmup_steps, ramp, after)

    def get_config(self):
        return {
            "schedule": nested_config(self.schedule),
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = cls._checked_config(config)
        config["schedule"] = nested_from_config(config["schedule"])
        return cls(**config)
