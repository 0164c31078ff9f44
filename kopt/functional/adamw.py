"""AdamW, as `keras.optimizers.AdamW`: Adam plus decoupled weight decay (default 0.004)."""

from __future__ import annotations

from kopt.functional.adam import AdamState, adam_rule
from kopt.functional.base import Transform
from kopt.functional.elementwise import elementwise_transform
from kopt.functional.options import Options, with_options

__all__ = ["adamw"]


@with_options
def adamw(
    learning_rate=0.001,
    weight_decay: float = 0.004,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    *,
    options: Options,
) -> Transform:
    r"""AdamW: Keras 3's Adam step after decoupled weight decay.

    .. math::
        \theta \leftarrow \theta - \eta \lambda \theta, \quad\text{then the Adam step of}
        \ `kopt.functional.adam`.

    The decay uses the same learning rate as the step (Keras 3 semantics), so with a
    schedule the decay follows the schedule.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      weight_decay: the decay :math:`\lambda`; must not be None. Default 0.004.
      beta_1, beta_2, epsilon, amsgrad: as in `kopt.functional.adam`.
      weight_decay_mask, clipnorm, clipvalue, global_clipnorm, bucket_threshold, use_ema,
        ema_momentum, ema_overwrite_frequency, loss_scale_factor,
        gradient_accumulation_steps, state_dtype, min_quantized_size: as in
        `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adamw(1e-3, weight_decay=0.01)
      >>> state = tx.init({"w": jnp.ones(3)})

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019);
    `keras.optimizers.AdamW`.
    """
    if weight_decay is None:
        raise ValueError(
            "Argument `weight_decay` must be a float. Received: weight_decay=None"
        )
    return elementwise_transform(
        adam_rule(beta_1, beta_2, epsilon, amsgrad), AdamState, learning_rate, options,
    )
