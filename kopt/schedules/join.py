"""`JoinSchedules`: run schedules one after another, each restarting its step count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import (
    check_boundaries,
    check_rate_or_schedule,
    evaluate,
    nested_config,
    nested_from_config,
    shift,
)
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["JoinSchedules"]


@register
class JoinSchedules(LearningRateSchedule):
    r"""Schedules joined at boundaries; each one counts its steps from its own start.

    With `schedules` :math:`s_0, \dots, s_n` and `boundaries` :math:`b_1 < \dots < b_n`
    (and :math:`b_0 = 0`):

    .. math::
        \eta(t) = s_i(t - b_i) \quad\text{for}\quad b_i \le t < b_{i+1}

    so at step :math:`b_i` schedule :math:`s_i` starts at its own step 0 (optax's
    convention; `PiecewiseConstantDecay` instead keeps step :math:`b_i` in the interval
    before it).

    Args:
      schedules: a list of schedules or numbers >= 0 (constant rates).
      boundaries: strictly increasing integers >= 0, one fewer than `schedules`.
      name: kept in the config. Default "JoinSchedules".

    Example:
      >>> from kopt.schedules import Constant, ExponentialDecay
      >>> sched = JoinSchedules([Constant(0.1), ExponentialDecay(0.05, 10, 0.5)], [100])
      >>> round(float(sched(99)), 6), round(float(sched(100)), 6), round(float(sched(110)), 6)
      (0.1, 0.05, 0.025)

    Reference: `optax.join_schedules`.
    """

    def __init__(self, schedules, boundaries, name="JoinSchedules"):
        if not isinstance(schedules, (list, tuple)) or not schedules:
            raise ValueError(
                "Argument `schedules` must be a non-empty list of schedules or numbers. "
                f"Received: schedules={schedules!r}"
            )
        for i, s in enumerate(schedules):
            check_rate_or_schedule(f"schedules[{i}]", s)
        self.boundaries = check_boundaries("boundaries", boundaries, len(schedules) - 1, integer=True)
        self.schedules = list(schedules)
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        lr = evaluate(self.schedules[0], step)
        for b, s in zip(self.boundaries, self.schedules[1:]):
            lr = jnp.where(step >= b, evaluate(s, shift(step, b)), lr)
        return lr

    def get_config(self):
        return {
            "schedules": [nested_config(s) for s in self.schedules],
            "boundaries": self.boundaries,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = cls._checked_config(config)
        if not isinstance(config["schedules"], (list, tuple)):
            raise TypeError(
                "The 'schedules' key of a JoinSchedules config must be a list. "
                f"Received: schedules={config['schedules']!r}")
        config["schedules"] = [nested_from_config(s) for s in config["schedules"]]
        return cls(**config)
