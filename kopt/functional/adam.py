"""Adam, as `keras.optimizers.Adam` (the "epsilon-hat" form)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adam", "AdamState", "adam_rule"]


@optimizer_state
class AdamState(NamedTuple):
    m: Packed                    # first moment, like params
    v: Packed                    # second moment, like params
    vhat: Packed | None = None   # running max of v, like params; None unless amsgrad


def adam_rule(beta_1, beta_2, epsilon, amsgrad) -> Rule:
    """Keras 3's Adam step, shared by `adam` and `adamw`."""
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def update(g, new, lr, t):
        del g
        alpha = lr * jnp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        v = new["vhat"] if amsgrad else new["v"]
        return -alpha * new["m"] / (jnp.sqrt(v) + epsilon)

    def step(g, s, lr, t):
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = s["v"] + (jnp.square(g) - s["v"]) * (1 - beta_2)
        new = {"m": m, "v": v}
        if amsgrad:
            new["vhat"] = jnp.maximum(s["vhat"], v)
        return update(g, new, lr, t), new

    return Rule(slots=("m", "v") + (("vhat",) if amsgrad else ()), step=step,
                nonnegative=("v", "vhat"), update=update)


@with_options
def adam(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    *,
    options: Options,
) -> Transform:
    r"""Adam in Keras 3's "epsilon-hat" form (epsilon is added to the uncorrected root).

    With step :math:`t = \text{count} + 1`:

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        \hat v &\leftarrow \max(\hat v, v) \text{ and } v := \hat v \quad\text{(amsgrad only)} \\
        \alpha &= \eta \sqrt{1-\beta_2^t} / (1-\beta_1^t), \qquad
        \theta \leftarrow \theta - \alpha\, m / (\sqrt{v} + \epsilon)

    This is not optax's form, which adds epsilon to the bias-corrected root; the two
    agree when epsilon is negligible.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the first moment. Default 0.9.
      beta_2: decay of the second moment. Default 0.999.
      epsilon: the "epsilon hat" of Kingma & Ba, section 2. Default 1e-7.
      amsgrad: keep the running maximum of `v` (Reddi et al., 2018). Default False.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adam(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015);
    `keras.optimizers.Adam`.
    """
    return elementwise_transform(
        adam_rule(beta_1, beta_2, epsilon, amsgrad), AdamState, learning_rate, options,
    )
