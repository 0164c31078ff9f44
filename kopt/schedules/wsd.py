"""`WarmupStableDecay` (WSD): warmup, a long constant phase, then a short decay."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_choice, check_nonnegative, check_steps, f32
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["WarmupStableDecay"]

_SHAPES = ("linear", "cosine", "1-sqrt")


@register
class WarmupStableDecay(LearningRateSchedule):
    r"""Warmup-stable-decay: linear warmup, a constant peak, then a decay to an end rate.

    With :math:`\eta_0` = `initial_learning_rate`, :math:`\eta_p` = `peak_learning_rate`,
    :math:`\eta_e` = `end_learning_rate` and phase lengths :math:`W, S, D`
    (`warmup_steps`, `stable_steps`, `decay_steps`):

    .. math::
        \eta(t) = \begin{cases}
          \eta_0 + (\eta_p - \eta_0)\, t / W & t < W \\
          \eta_p & W \le t < W + S \\
          \eta_e + (\eta_p - \eta_e)\, g\bigl(\min((t - W - S) / D, 1)\bigr) & t \ge W + S
        \end{cases}

    where the decay shape :math:`g` falls from 1 to 0: :math:`g(f) = 1 - f` (``"linear"``),
    :math:`\tfrac12(1 + \cos\pi f)` (``"cosine"``) or :math:`1 - \sqrt f` (``"1-sqrt"``).
    After :math:`W + S + D` steps the rate stays at :math:`\eta_e`. Because the stable
    phase has no fixed end, a run can be extended, or branched into a decay at any
    checkpoint, without restarting.

    Args:
      peak_learning_rate: :math:`\eta_p`, a number >= 0.
      warmup_steps: :math:`W`, an integer >= 0.
      stable_steps: :math:`S`, an integer >= 0.
      decay_steps: :math:`D`, an integer > 0.
      initial_learning_rate: :math:`\eta_0`, a number >= 0. Default 0.0.
      end_learning_rate: :math:`\eta_e`, a number >= 0. Default 0.0.
      decay_shape: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``. Default ``"linear"``.
      name: kept in the config. Default "WarmupStableDecay".

    Example:
      >>> sched = WarmupStableDecay(1e-3, warmup_steps=100, stable_steps=800, decay_steps=100,
      ...                           decay_shape="1-sqrt")
      >>> round(float(sched(500)), 8), round(float(sched(925)), 8), float(sched(1000))
      (0.001, 0.0005, 0.0)

    Reference: Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies", 2024 (arXiv:2404.06395); the 1-sqrt decay: Hägele et al.,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", 2024
    (arXiv:2405.18392).
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        stable_steps,
        decay_steps,
        initial_learning_rate=0.0,
        end_learning_rate=0.0,
        decay_shape="linear",
        name="WarmupStableDecay",
    ):
        check_nonnegative("peak_learning_rate", peak_learning_rate)
        check_steps("warmup_steps", warmup_steps)
        check_steps("stable_steps", stable_steps)
        check_steps("decay_steps", decay_steps, positive=True)
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_nonnegative("end_learning_rate", end_learning_rate)
        check_choice("decay_shape", decay_shape, _SHAPES)
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.stable_steps = stable_steps
        self.decay_steps = decay_steps
        self.initial_learning_rate = initial_learning_rate
        self.end_learning_rate = end_learning_rate
        self.decay_shape = decay_shape
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        t = f32(step)
        lr0, peak, end = (f32(x) for x in (
            self.initial_learning_rate, self.peak_learning_rate, self.end_learning_rate))
        ramp = lr0 + (peak - lr0) * (t / f32(self.warmup_steps or 1))
        start = self.warmup_steps + self.stable_steps
        frac = jnp.clip((t - start) / f32(self.decay_steps), 0.0, 1.0)
        if self.decay_shape == "linear":
            shape = 1.0 - frac
        elif self.decay_shape == "cosine":
            shape = 0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * frac))
        else:
            shape = 1.0 - jnp.sqrt(frac)
        decay = end + (peak - end) * shape
        return jnp.where(t < self.warmup_steps, ramp, jnp.where(t < start, peak, decay))

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "stable_steps": self.stable_steps,
            "decay_steps": self.decay_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "end_learning_rate": self.end_learning_rate,
            "decay_shape": self.decay_shape,
            "name": self.name,
        }
