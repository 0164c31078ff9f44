"""Adan: adaptive Nesterov momentum (Xie et al., 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adan", "AdanState"]


@optimizer_state
class AdanState(NamedTuple):
    m: Packed                    # EMA of the gradients, like params
    v: Packed                    # EMA of the gradient differences, like params
    n: Packed                    # EMA of the squared Nesterov gradient, like params
    prev_grad: Packed            # the previous step's gradient, like params


@with_options
def adan(
    learning_rate=0.001,
    beta_1: float = 0.98,
    beta_2: float = 0.92,
    beta_3: float = 0.99,
    epsilon: float = 1e-8,
    *,
    options: Options,
) -> Transform:
    r"""Adan: Adam-like steps on a Nesterov momentum estimated from gradient differences.

    With step :math:`t = \text{count} + 1` and :math:`\Delta = g - g_{\text{prev}}`
    (:math:`\Delta = 0` at :math:`t = 1`):

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) \Delta, \qquad
        n \leftarrow \beta_3 n + (1-\beta_3) (g + \beta_2 \Delta)^2 \\
        \theta &\leftarrow \theta - \eta\,
            \frac{m / (1-\beta_1^t) + \beta_2\, v / (1-\beta_2^t)}
                 {\sqrt{n / (1-\beta_3^t)} + \epsilon},
        \qquad g_{\text{prev}} \leftarrow g

    The betas are decay rates, as in Adam and the authors' code; the paper writes
    :math:`1 - \beta` for them (its :math:`\beta_1 = 0.02` is `beta_1=0.98`). The moments
    start at zero with bias correction, as in the authors' code. Weight decay is
    decoupled (``weight_decay``, their `no_prox=True`), not the paper's proximal
    :math:`\theta / (1 + \lambda\eta)`; the two differ by :math:`O((\lambda\eta)^2)`.

    optax 0.2.8's `optax.adan` weights :math:`\Delta` by :math:`1-\beta_2` where the paper
    has (in these units) :math:`\beta_2` (optax pull request #1715); the two agree only at
    :math:`\beta_2 = 0.5`.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the gradient EMA `m`, in [0, 1]. Default 0.98.
      beta_2: decay of the gradient-difference EMA `v`, and the weight of the Nesterov
        term, in [0, 1]. Default 0.92.
      beta_3: decay of the second moment `n`, in [0, 1]. Default 0.99.
      epsilon: added to the bias-corrected root. Default 1e-8.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    State: `AdanState` with slots `m`, `v`, `n`, `prev_grad` (also the stateful
    `get_weights` order after the iteration count). Under `state_dtype='int8'`,
    `prev_grad` stays float32: the gradient difference it feeds is small next to the
    gradient, and 8-bit codes of the gradient would swamp it.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adan(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models" (arXiv 2022; IEEE TPAMI 2024), Algorithm 1; https://arxiv.org/abs/2208.06677.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_unit_interval("beta_3", beta_3)
    check_nonnegative("epsilon", epsilon)

    def step(g, s, lr, t):
        diff = jnp.where(t == 1, jnp.zeros_like(g), g - s["prev_grad"])
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = s["v"] + (diff - s["v"]) * (1 - beta_2)
        n = s["n"] + (jnp.square(g + beta_2 * diff) - s["n"]) * (1 - beta_3)
        direction = m / (1 - beta_1**t) + beta_2 * v / (1 - beta_2**t)
        delta = -lr * direction / (jnp.sqrt(n / (1 - beta_3**t)) + epsilon)
        return delta, {"m": m, "v": v, "n": n, "prev_grad": g}

    # `prev_grad` feeds the difference g - prev_grad: 8-bit codes of g would swamp it.
    rule = Rule(slots=("m", "v", "n", "prev_grad"), step=step, nonnegative=("n",),
                state_dtypes={"prev_grad": ("bfloat16",)})
    return elementwise_transform(
        rule, AdanState, learning_rate, options,
    )
