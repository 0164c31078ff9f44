"""Keras 3's `CosineDecay`, with its optional linear warmup."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_nonnegative, check_positive, check_unit_interval, f32
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["CosineDecay"]


@register
class CosineDecay(LearningRateSchedule):
    r"""Cosine decay, after an optional linear warmup.

    Without `warmup_target`, with :math:`\eta_0` = `initial_learning_rate`,
    :math:`T` = `decay_steps` and :math:`\alpha` = `alpha`:

    .. math::
        \eta(t) = \eta_0 \Bigl((1 - \alpha)\,\tfrac12\bigl(1 + \cos(\pi \min(t, T) / T)\bigr)
        + \alpha\Bigr)

    With `warmup_target` :math:`\eta_w` and :math:`W` = `warmup_steps`, the rate rises
    linearly, :math:`\eta(t) = \eta_0 + (\eta_w - \eta_0)\, t / W` for :math:`t < W`, then
    decays as above from :math:`\eta_w` to :math:`\alpha\eta_w`, evaluated at
    :math:`\min(t - W, T)`.

    Args:
      initial_learning_rate: :math:`\eta_0`, a number >= 0.
      decay_steps: :math:`T`, the length of the decay, a number > 0.
      alpha: the final rate as a fraction of the rate the decay starts from, in [0, 1].
        Default 0.0.
      name: kept in the config. Default "CosineDecay".
      warmup_target: :math:`\eta_w`, the rate at the end of the warmup, a number >= 0;
        None skips the warmup. Default None.
      warmup_steps: :math:`W`, a number >= 0. Default 0.

    Example:
      >>> sched = CosineDecay(0.0, decay_steps=1000, warmup_target=0.1, warmup_steps=100)
      >>> round(float(sched(50)), 6), round(float(sched(100)), 6), float(sched(1100))
      (0.05, 0.1, 0.0)

    Reference: `keras.optimizers.schedules.CosineDecay` (Keras 3); Loshchilov & Hutter,
    "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017; warmup: Goyal et al.,
    "Accurate, Large Minibatch SGD", 2017.
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        alpha=0.0,
        name="CosineDecay",
        warmup_target=None,
        warmup_steps=0,
    ):
        check_nonnegative("initial_learning_rate", initial_learning_rate)
        check_positive("decay_steps", decay_steps)
        check_unit_interval("alpha", alpha)
        if warmup_target is not None:
            check_nonnegative("warmup_target", warmup_target)
        check_nonnegative("warmup_steps", warmup_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decay(self, t, decay_from):
        cosine = 0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * (t / f32(self.decay_steps))))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: ArrayLike) -> jax.Array:
        t, lr0 = f32(step), f32(self.initial_learning_rate)
        if self.warmup_target is None:
            return self._decay(jnp.minimum(t, f32(self.decay_steps)), lr0)
        target, warmup = f32(self.warmup_target), f32(self.warmup_steps)
        t = jnp.minimum(t, f32(self.decay_steps) + warmup)
        # A Python-side guard keeps the unselected branch finite when warmup_steps == 0.
        ramp = (target - lr0) * (t / f32(self.warmup_steps or 1)) + lr0
        return jnp.where(t < warmup, ramp, self._decay(t - warmup, target))

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }
