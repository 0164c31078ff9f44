"""Adamax, as `keras.optimizers.Adamax`: Adam with the infinity norm."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adamax", "AdamaxState"]


@optimizer_state
class AdamaxState(NamedTuple):
    m: Packed                    # first moment, like params (Keras 3: "momentum")
    v: Packed                    # decayed infinity norm of g, like params (Keras 3: "norm")


@with_options
def adamax(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    *,
    options: Options,
) -> Transform:
    r"""Adamax, the infinity-norm variant of Adam, with Keras 3's formula.

    With step :math:`t = \text{count} + 1`:

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow \max(\beta_2 v, |g|) \\
        \theta &\leftarrow \theta - \frac{\eta\, m}{(1-\beta_1^t)(v + \epsilon)}

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the first moment. Default 0.9.
      beta_2: decay of the infinity norm. Default 0.999.
      epsilon: added to the norm. Default 1e-7.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adamax(2e-3)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015),
    section 7.1; `keras.optimizers.Adamax`.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def step(g, s, lr, t):
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = jnp.maximum(beta_2 * s["v"], jnp.abs(g))
        return -(lr * m) / ((1 - beta_1**t) * (v + epsilon)), {"m": m, "v": v}

    rule = Rule(slots=("m", "v"), step=step, nonnegative=("v",))
    return elementwise_transform(
        rule, AdamaxState, learning_rate, options,
    )
