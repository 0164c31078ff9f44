"""AdEMAMix: Adam with a mixture of a fast and a slow gradient EMA (Pagliardini et al., 2024)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import (
    check_int,
    check_nonnegative,
    check_unit_interval,
    is_traced,
    maybe_nonzero,
)

__all__ = ["ademamix", "AdEMAMixState"]


@optimizer_state
class AdEMAMixState(NamedTuple):
    m1: Packed                   # fast EMA of the gradients, like params
    m2: Packed                   # slow EMA of the gradients, like params
    nu: Packed                   # second moment, like params


def _check_warmup(name, value):
    return check_int(name, value, low=1, allow_none=True,
                     message=f"`{name}` must be an integer >= 1 or None.")


@with_options
def ademamix(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    beta_3: float = 0.9999,
    alpha: float = 5.0,
    epsilon: float = 1e-8,
    alpha_warmup_steps: int | None = None,
    beta_3_warmup_steps: int | None = None,
    *,
    options: Options,
) -> Transform:
    r"""AdEMAMix: Adam's step plus :math:`\alpha` times a slow, uncorrected gradient EMA.

    With step :math:`t = \text{count} + 1`:

    .. math::
        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g, \qquad
        m_2 \leftarrow \beta_3(t)\, m_2 + (1-\beta_3(t))\, g, \qquad
        \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \eta\,
            \frac{m_1 / (1-\beta_1^t) + \alpha(t)\, m_2}{\sqrt{\nu / (1-\beta_2^t)} + \epsilon}

    The slow EMA :math:`m_2` is not bias-corrected: it fills slowly on purpose. Without
    warmups :math:`\alpha(t) = \alpha` and :math:`\beta_3(t) = \beta_3`. The paper's
    schedulers, for a large :math:`\beta_3` early in training, are
    :math:`\alpha(t) = \alpha \min(t / T_\alpha, 1)` and a :math:`\beta_3(t)` whose
    half-life grows linearly from :math:`\beta_1`'s to :math:`\beta_3`'s:

    .. math::
        \beta_3(t) = \min\!\Big(\exp\frac{\ln\beta_1 \ln\beta_3}
            {(1 - a)\ln\beta_3 + a \ln\beta_1}, \beta_3\Big),
        \qquad a = \min(t / T_{\beta_3}, 1).

    The paper advises both warmups with :math:`T` equal to the number of training steps
    when :math:`\beta_3` is large, and a weight decay (decoupled, ``weight_decay``) of
    about 0.1 for language models.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the fast EMA, in [0, 1]. Default 0.9.
      beta_2: decay of the second moment, in [0, 1]. Default 0.999.
      beta_3: decay of the slow EMA, in [0, 1]. Default 0.9999.
      alpha: weight of the slow EMA, >= 0. Default 5.0 (the paper recommends 4 to 10;
        the authors' PyTorch code defaults to 2.0).
      epsilon: added to the bias-corrected root. Default 1e-8.
      alpha_warmup_steps: :math:`T_\alpha`, an int >= 1, or None (no warmup). Default None.
      beta_3_warmup_steps: :math:`T_{\beta_3}`, an int >= 1, or None (no warmup); needs
        :math:`0 < \beta_3 < 1` and :math:`\beta_1 < 1`. Default None.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    State: `AdEMAMixState` with slots `m1`, `m2`, `nu` (also the stateful `get_weights`
    order after the iteration count).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.ademamix(1e-3, alpha_warmup_steps=10_000,
      ...                               beta_3_warmup_steps=10_000, weight_decay=0.1)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster,
    Older" (ICLR 2025), Algorithm 1; https://arxiv.org/abs/2409.03137.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_unit_interval("beta_3", beta_3)
    check_nonnegative("alpha", alpha)
    check_nonnegative("epsilon", epsilon)
    alpha_warmup_steps = _check_warmup("alpha_warmup_steps", alpha_warmup_steps)
    beta_3_warmup_steps = _check_warmup("beta_3_warmup_steps", beta_3_warmup_steps)
    traced = is_traced(beta_1) or is_traced(beta_3)
    if not traced:
        beta_1, beta_3 = float(beta_1), float(beta_3)
    if beta_3_warmup_steps is not None and not traced and not (0 < beta_3 < 1 and beta_1 < 1):
        raise ValueError(
            "The beta_3 warmup interpolates 1 / log(beta) from beta_1 to beta_3, so it needs "
            f"0 < beta_3 < 1 and beta_1 < 1. Received: beta_1={beta_1!r}, beta_3={beta_3!r}")

    if beta_3_warmup_steps is not None:
        # 1 / ln(beta_3(t)) moves linearly from 1 / ln(beta_1) (0 when beta_1 = 0) to
        # 1 / ln(beta_3); 1 - beta_3(t) = -expm1(ln beta_3(t)) keeps float32 precision.
        if traced:   # optax.inject_hyperparams under jit
            tiny = jnp.finfo(jnp.float32).tiny
            inv_1 = jnp.where(beta_1 > 0, 1.0 / jnp.log(jnp.maximum(beta_1, tiny)), 0.0)
            inv_3 = 1.0 / jnp.log(beta_3)
        else:
            inv_1 = 1.0 / math.log(beta_1) if beta_1 > 0 else 0.0
            inv_3 = 1.0 / math.log(beta_3)

        def slow_rate(t):
            a = jnp.minimum(t / beta_3_warmup_steps, 1.0)
            inv = (1.0 - a) * inv_1 + a * inv_3
            return jnp.maximum(-jnp.expm1(1.0 / inv), 1.0 - beta_3)
    else:
        def slow_rate(t):
            return 1.0 - beta_3

    def step(g, s, lr, t):
        mix = (alpha * jnp.minimum(t / alpha_warmup_steps, 1.0)
               if maybe_nonzero(alpha_warmup_steps) else alpha)
        m1 = s["m1"] + (g - s["m1"]) * (1 - beta_1)
        m2 = s["m2"] + (g - s["m2"]) * slow_rate(t)
        nu = s["nu"] + (jnp.square(g) - s["nu"]) * (1 - beta_2)
        direction = m1 / (1 - beta_1**t) + mix * m2
        delta = -lr * direction / (jnp.sqrt(nu / (1 - beta_2**t)) + epsilon)
        return delta, {"m1": m1, "m2": m2, "nu": nu}

    rule = Rule(slots=("m1", "m2", "nu"), step=step, nonnegative=("nu",))
    return elementwise_transform(
        rule, AdEMAMixState, learning_rate, options,
    )
