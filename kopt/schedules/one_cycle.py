"""`OneCycle`: up from a low rate to a peak, then down below the start (Smith & Topin)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_steps,
    check_unit_interval,
    f32,
)
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["OneCycle"]

_STRATEGIES = ("cosine", "linear")


@register
class OneCycle(LearningRateSchedule):
    r"""The one-cycle policy: anneal up to a peak, then down to far below the start.

    With :math:`\eta_p` = `max_learning_rate`, :math:`N` = `total_steps` and
    :math:`U = \text{pct\_start}\cdot N` steps going up, the rate starts at
    :math:`\eta_0 = \eta_p / \text{div\_factor}` and ends at
    :math:`\eta_N = \eta_0 / \text{final\_div\_factor}`:

    .. math::
        \eta(t) = A\bigl(\eta_0, \eta_p, t / U\bigr) \quad (t < U), \qquad
        \eta(t) = A\Bigl(\eta_p, \eta_N, \min\bigl(\tfrac{t - U}{N - U}, 1\bigr)\Bigr)
        \quad (t \ge U)

    where the annealing :math:`A(a, b, f)` from :math:`a` to :math:`b` is
    :math:`b + (a - b)\,\tfrac12(1 + \cos\pi f)` for ``"cosine"`` and
    :math:`a + (b - a) f` for ``"linear"``. After :math:`N` steps the rate stays at
    :math:`\eta_N`. This schedules the learning rate only; the policy's inverse momentum
    cycle is not part of it.

    Args:
      max_learning_rate: :math:`\eta_p`, a number >= 0.
      total_steps: :math:`N`, an integer > 0.
      pct_start: the fraction of `total_steps` spent going up, in [0, 1). Default 0.3.
      anneal_strategy: ``"cosine"`` or ``"linear"``. Default ``"cosine"``.
      div_factor: :math:`\eta_p / \eta_0`, a number > 0. Default 25.0.
      final_div_factor: :math:`\eta_0 / \eta_N`, a number > 0. Default 1e4.
      name: kept in the config. Default "OneCycle".

    Example:
      >>> sched = OneCycle(0.1, total_steps=1000)
      >>> round(float(sched(0)), 6), round(float(sched(300)), 6), float(sched(1000)) < 1e-6
      (0.004, 0.1, True)

    Reference: Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates", 2017 (arXiv:1708.07120); `torch.optim.lr_scheduler.OneCycleLR`
    (same arguments and defaults, two phases).
    """

    def __init__(
        self,
        max_learning_rate,
        total_steps,
        pct_start=0.3,
        anneal_strategy="cosine",
        div_factor=25.0,
        final_div_factor=1e4,
        name="OneCycle",
    ):
        check_nonnegative("max_learning_rate", max_learning_rate)
        check_steps("total_steps", total_steps, positive=True)
        check_unit_interval("pct_start", pct_start)
        if pct_start == 1:
            raise ValueError("Argument `pct_start` must be < 1. Received: pct_start=1")
        check_choice("anneal_strategy", anneal_strategy, _STRATEGIES)
        check_positive("div_factor", div_factor)
        check_positive("final_div_factor", final_div_factor)
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.anneal_strategy = anneal_strategy
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.name = name

    def _anneal(self, start, end, frac):
        if self.anneal_strategy == "linear":
            return start + (end - start) * frac
        return end + (start - end) * (0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * frac)))

    def __call__(self, step: ArrayLike) -> jax.Array:
        t = f32(step)
        up = self.pct_start * self.total_steps
        initial = self.max_learning_rate / self.div_factor
        peak, low, final = (f32(x) for x in (
            self.max_learning_rate, initial, initial / self.final_div_factor))
        rise = self._anneal(low, peak, t / f32(up or 1))
        fall = self._anneal(peak, final, jnp.clip((t - up) / f32(self.total_steps - up), 0.0, 1.0))
        return jnp.where(t < up, rise, fall)

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "name": self.name,
        }
