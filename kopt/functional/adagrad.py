"""Adagrad, as `keras.optimizers.Adagrad` (initial accumulator 0.1, epsilon inside the root)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative

__all__ = ["adagrad", "AdagradState"]


@optimizer_state
class AdagradState(NamedTuple):
    accumulator: Packed          # sum of g^2 (from initial_accumulator_value), like params


@with_options
def adagrad(
    learning_rate=0.001,
    initial_accumulator_value: float = 0.1,
    epsilon: float = 1e-7,
    *,
    options: Options,
) -> Transform:
    r"""Adagrad with Keras 3's formula: epsilon sits inside the square root.

    With the accumulator starting at :math:`a_0` (`initial_accumulator_value`):

    .. math::
        a \leftarrow a + g^2, \qquad
        \theta \leftarrow \theta - \eta\, g / \sqrt{a + \epsilon}

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      initial_accumulator_value: starting value of the accumulator, >= 0. Default 0.1.
      epsilon: added to the accumulator inside the square root. Default 1e-7.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adagrad(0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization" (JMLR 2011); `keras.optimizers.Adagrad`.
    """
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_nonnegative("epsilon", epsilon)

    def update(g, new, lr, t):
        del t
        return -(lr * g) / jnp.sqrt(new["accumulator"] + epsilon)

    def step(g, s, lr, t):
        new = {"accumulator": s["accumulator"] + g * g}
        return update(g, new, lr, t), new

    rule = Rule(
        slots=("accumulator",), step=step, fill={"accumulator": initial_accumulator_value},
        nonnegative=("accumulator",), update=update,
    )
    return elementwise_transform(
        rule, AdagradState, learning_rate, options,
    )
