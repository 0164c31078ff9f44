"""Lion, as `keras.optimizers.Lion`."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_number, check_unit_interval, maybe_nonzero

__all__ = ["lion", "LionState"]


@optimizer_state
class LionState(NamedTuple):
    momentum: Packed             # the momentum m, like params


@with_options
def lion(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    *,
    options: Options,
) -> Transform:
    r"""Lion (EvoLved Sign Momentum), as Keras 3 computes it.

    .. math::
        \theta \leftarrow \theta - \eta\, \operatorname{sign}(\beta_1 m + (1-\beta_1) g),
        \qquad m \leftarrow \beta_2 m + (1-\beta_2) g

    Every coordinate moves by exactly :math:`\eta` (or 0), so Lion wants a learning rate
    3-10x smaller than Adam's. Weight decay is decoupled, as for every kopt optimizer.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: interpolation weight for the update direction, in (0, 1]. Default 0.9.
      beta_2: decay of the momentum. Default 0.99.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.lion(1e-4)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> updates["w"]
      Array([-0.0001, -0.0001, -0.0001], dtype=float32)

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023);
    `keras.optimizers.Lion`.
    """
    # Keras 3's message (its check is 0 < beta_1 <= 1, despite the "[0, 1]").
    check_number("beta_1", beta_1, low=0, low_open=True, high=1, message=(
        "Argument `beta_1` must be in the [0, 1] range. Otherwise, the optimizer "
        "degenerates to SignSGD. (kopt: 0 < beta_1 <= 1.)"))
    check_unit_interval("beta_2", beta_2)

    def step(g, s, lr, t):
        del t
        direction = jnp.sign(s["momentum"] * beta_1 + g * (1.0 - beta_1))
        momentum = s["momentum"] * beta_2 + g * (1.0 - beta_2)
        return -(lr * direction), {"momentum": momentum}

    def update(g, new, lr, t):
        # The same direction from the new momentum m' = beta_2 m + (1 - beta_2) g:
        # beta_1 m + (1 - beta_1) g = (beta_1 m' + (beta_2 - beta_1) g) / beta_2.
        del t
        return -(lr * jnp.sign(new["momentum"] * beta_1 + g * (beta_2 - beta_1)))

    return elementwise_transform(
        Rule(slots=("momentum",), step=step, update=update if maybe_nonzero(beta_2) else None),
        LionState, learning_rate, options,
    )
