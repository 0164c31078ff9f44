"""ADOPT: Adam that normalises the gradient by the previous second moment (Taniguchi et al., 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adopt", "AdoptState"]


@optimizer_state
class AdoptState(NamedTuple):
    m: Packed                    # momentum of the normalised gradient, like params
    v: Packed                    # second moment of the gradient, like params


@with_options
def adopt(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.9999,
    epsilon: float = 1e-6,
    use_clipping: bool = True,
    *,
    options: Options,
) -> Transform:
    r"""ADOPT: the gradient is normalised by the second moment of the *previous* steps,
    then averaged, so the update never divides by a moment that contains the gradient.

    With step :math:`t = \text{count} + 1`: the first step only records
    :math:`v \leftarrow g^2` (the params do not move); then

    .. math::
        \tilde g &= \operatorname{clip}\big(g / \max(\sqrt{v}, \epsilon),\,
                    -(t-1)^{1/4},\, (t-1)^{1/4}\big) \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\, \tilde g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, g^2, \qquad
        \theta \leftarrow \theta - \eta\, m

    The clipping (the paper's stabilised variant, on by default as in optax) bounds the
    normalised gradient where :math:`v` is still near zero; `use_clipping=False` gives
    Algorithm 1 as first stated. Both equal `optax.contrib.adopt` with the same
    `use_clipping` to float32 rounding.
    With `state_dtype='int8'` the momentum `m` stays float32 (a normalised gradient of
    order one is poorly served by the 8-bit map) and `v` is quantised.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the momentum, in [0, 1]. Default 0.9.
      beta_2: decay of the second moment, in [0, 1]. Default 0.9999, the paper's.
      epsilon: the floor of :math:`\sqrt{v}`. Default 1e-6, the paper's.
      use_clipping: clip the normalised gradient to :math:`\pm (t-1)^{1/4}`. Default True.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: see
      `kopt.functional.Options`.

    State: `AdoptState` with slots `m`, `v` (also the stateful `get_weights` order after
    the iteration count).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adopt(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> bool(jnp.all(updates["w"] == 0))   # the first step only records v
      True

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the
    Optimal Rate" (NeurIPS 2024), Algorithm 1; https://arxiv.org/abs/2411.02853.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def update(g, new, lr, t):
        del g, t
        return -lr * new["m"]

    def step(g, slots, lr, t):
        first = t == 1   # only v moves: m keeps its zeros, v becomes g^2
        b1 = jnp.where(first, 1.0, beta_1).astype(g.dtype)
        b2 = jnp.where(first, 0.0, beta_2).astype(g.dtype)
        normed = g / jnp.maximum(jnp.sqrt(slots["v"]), jnp.asarray(epsilon, g.dtype))
        if use_clipping:
            bound = (t - 1) ** 0.25
            normed = jnp.clip(normed, -bound, bound)
        m = b1 * slots["m"] + (1 - b1) * normed
        v = b2 * slots["v"] + (1 - b2) * jnp.square(g)
        new = {"m": m, "v": v}
        return update(g, new, lr, t), new

    rule = Rule(slots=("m", "v"), step=step, update=update, nonnegative=("v",),
                state_dtypes={"m": ("bfloat16",)})
    return elementwise_transform(rule, AdoptState, learning_rate, options)
