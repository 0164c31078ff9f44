"""Keras 3's `PiecewiseConstantDecay`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kopt.schedules._util import check_boundaries, check_nonnegative, f32
from kopt.schedules.base import LearningRateSchedule, register

__all__ = ["PiecewiseConstantDecay"]


@register
class PiecewiseConstantDecay(LearningRateSchedule):
    r"""A piecewise constant rate.

    .. math::
        \eta(t) = v_0 \text{ if } t \le b_0, \quad
        v_i \text{ if } b_{i-1} < t \le b_i, \quad
        v_n \text{ if } t > b_{n-1}

    for `boundaries` :math:`b_0 < \dots < b_{n-1}` and `values` :math:`v_0, \dots, v_n`.
    As in Keras, a boundary belongs to the interval before it, and with an integer step
    the boundaries are truncated to integers.

    Args:
      boundaries: strictly increasing numbers.
      values: numbers >= 0, one more than `boundaries`.
      name: kept in the config. Default "PiecewiseConstant".

    Example:
      >>> sched = PiecewiseConstantDecay([100000, 110000], [1.0, 0.5, 0.1])
      >>> float(sched(100000)), float(sched(100001))
      (1.0, 0.5)

    Reference: `keras.optimizers.schedules.PiecewiseConstantDecay` (Keras 3).
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"Argument `values` must be a non-empty list of numbers. Received: values={values!r}"
            )
        for v in values:
            check_nonnegative("values[...]", v)
        self.boundaries = check_boundaries("boundaries", boundaries, len(values) - 1)
        self.values = list(values)
        self.name = name

    def __call__(self, step: ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        if jnp.issubdtype(step.dtype, jnp.integer):
            bounds = [int(b) for b in self.boundaries]  # Keras casts them to the step's dtype
        else:
            step, bounds = f32(step), [float(b) for b in self.boundaries]
        lr = jnp.full(step.shape, self.values[-1], jnp.float32)
        for b, v in zip(reversed(bounds), reversed(self.values[:-1])):
            lr = jnp.where(step <= b, jnp.float32(v), lr)
        return lr

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}
