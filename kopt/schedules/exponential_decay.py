"""Keras 3's `ExponentialDecay`."""

from __future__ import annotations

import jax.numpy as jnp

from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["ExponentialDecay"]


@register
class ExponentialDecay(LearningRateSchedule):
    """`lr(step) = initial_learning_rate * decay_rate ** (step / decay_steps)`.

    With `staircase=True` the exponent is `floor(step / decay_steps)`. Matches
    `keras.optimizers.schedules.ExponentialDecay`.

    Args:
      initial_learning_rate: the rate at step 0.
      decay_steps: positive number of steps per decay period.
      decay_rate: the factor applied per period.
      staircase: decay in discrete intervals. Default False.
      name: optional name, kept in the config. Default "ExponentialDecay".

    Example:
      >>> sched = ExponentialDecay(1e-2, decay_steps=10000, decay_rate=0.9)
      >>> float(sched(10000))  # doctest: +ELLIPSIS
      0.009...
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        decay_rate,
        staircase=False,
        name="ExponentialDecay",
    ):
        if decay_steps <= 0:
            raise ValueError(f"Argument `decay_steps` must be > 0. Received: decay_steps={decay_steps}")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step):
        lr0 = jnp.asarray(self.initial_learning_rate, jnp.float32)
        p = jnp.asarray(step, jnp.float32) / jnp.float32(self.decay_steps)
        if self.staircase:
            p = jnp.floor(p)
        return lr0 * jnp.power(jnp.float32(self.decay_rate), p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }
