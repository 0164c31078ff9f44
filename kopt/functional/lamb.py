"""Lamb, as `keras.optimizers.Lamb` (Adam moments scaled by a per-tensor trust ratio)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["lamb", "LambState"]


@optimizer_state(seed=False)
class LambState(NamedTuple):
    m: Packed                    # first moment, like params
    v: Packed                    # second moment, like params


@with_options(exclude=('state_dtype', 'min_quantized_size'))
def lamb(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    *,
    options: Options,
) -> Transform:
    r"""Lamb as Keras 3 computes it: a bias-corrected Adam direction, scaled per tensor.

    With step :math:`t = \text{count} + 1` and :math:`\theta` the param (after weight
    decay):

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        u &= \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}, \qquad
        r = \begin{cases} \lVert\theta\rVert_2 / \lVert u\rVert_2
            & \lVert\theta\rVert_2 > 0 \text{ and } \lVert u\rVert_2 > 0 \\
            1 & \text{otherwise} \end{cases} \\
        \theta &\leftarrow \theta - r\, \eta\, u

    The norms are over each whole tensor. As in Keras, weight decay is decoupled (applied
    to :math:`\theta` before the step, outside the trust ratio), unlike the paper's
    Algorithm 2, which adds :math:`\lambda\theta` to :math:`u`.

    The rule reads the params (:math:`\lVert\theta\rVert`), so `update` needs them. It sees
    one whole tensor at a time, so `bucket_threshold` is accepted and ignored.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the first moment, in [0, 1]. Default 0.9.
      beta_2: decay of the second moment, in [0, 1]. Default 0.999.
      epsilon: added to the bias-corrected root of `v`, >= 0. Default 1e-7.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps: as in `kopt.functional.sgd`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.lamb(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes" (ICLR 2020); `keras.optimizers.Lamb`.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def step(g, s, lr, t, param):
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = s["v"] + (jnp.square(g) - s["v"]) * (1 - beta_2)
        u = (m / (1 - beta_1**t)) / (jnp.sqrt(v / (1 - beta_2**t)) + epsilon)
        w_norm = jnp.sqrt(jnp.sum(jnp.square(param)))
        u_norm = jnp.sqrt(jnp.sum(jnp.square(u)))
        trusted = (w_norm > 0) & (u_norm > 0)
        ratio = jnp.where(trusted, w_norm / jnp.where(trusted, u_norm, 1), 1)
        return -(ratio * lr) * u, {"m": m, "v": v}

    rule = Rule(slots=("m", "v"), step=step, needs_params=True, per_leaf=True)
    return elementwise_transform(
        rule, LambState, learning_rate, options,
    )
