"""RMSprop, as `keras.optimizers.RMSprop` (epsilon inside the square root)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform, by_slot
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval, maybe_nonzero

__all__ = ["rmsprop", "RMSpropState"]


@optimizer_state
class RMSpropState(NamedTuple):
    rms: Packed                  # running mean of g^2, like params
    momentum: Packed | None = None   # velocity, like params; None when momentum == 0
    mg: Packed | None = None         # running mean of g, like params; None unless centered


@with_options
def rmsprop(
    learning_rate=0.001,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
    *,
    options: Options,
) -> Transform:
    r"""RMSprop with Keras 3's formula; epsilon sits inside the square root.

    .. math::
        r &\leftarrow \rho r + (1-\rho) g^2 \\
        \bar g &\leftarrow \rho \bar g + (1-\rho) g \quad\text{(centered only)} \\
        \Delta &= \eta\, g / \sqrt{r - \bar g^2 + \epsilon}
              \quad(\bar g = 0 \text{ unless centered}) \\
        \theta &\leftarrow \theta - \Delta
            \quad\text{or, with momentum } \mu>0:\quad
            m \leftarrow \mu m + \Delta,\ \theta \leftarrow \theta - m .

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      rho: discount of the running averages. Default 0.9.
      momentum: float in [0, 1]. Default 0.0.
      epsilon: added to the denominator, inside the square root. Default 1e-7.
      centered: normalise by the variance estimate instead of the second moment.
        Default False.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.rmsprop(1e-3, centered=True)
      >>> state = tx.init({"w": jnp.ones(3)})

    Reference: `keras.optimizers.RMSprop`; Hinton, Lecture 6e of "Neural Networks for
    Machine Learning" (2012).
    """
    check_unit_interval("rho", rho)
    check_unit_interval("momentum", momentum)
    check_nonnegative("epsilon", epsilon)
    def increment(g, new, lr):
        if centered:
            denominator = new["rms"] - jnp.square(new["mg"]) + epsilon
        else:
            denominator = new["rms"] + epsilon
        return lr * g * jax.lax.rsqrt(denominator)

    def build(has_slot):
        slots = ("rms",) + (("momentum",) if has_slot else ()) + (("mg",) if centered else ())

        def update(g, new, lr, t):
            del t
            return -new["momentum"] if has_slot else -increment(g, new, lr)

        def step(g, s, lr, t):
            new = {"rms": rho * s["rms"] + (1 - rho) * jnp.square(g)}
            if centered:
                new["mg"] = rho * s["mg"] + (1 - rho) * g
            if has_slot:
                new["momentum"] = momentum * s["momentum"] + increment(g, new, lr)
            return update(g, new, lr, t), new

        rule = Rule(slots=slots, step=step, nonnegative=("rms",), update=update)
        return lambda: elementwise_transform(rule, RMSpropState, learning_rate, options)

    if isinstance(momentum, jax.Array):   # optax.inject_hyperparams: the state decides
        return by_slot("momentum", build(True), build(False), maybe_nonzero(momentum))
    return build(bool(momentum))()
