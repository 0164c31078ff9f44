"""RAdam: Adam with the variance of its adaptive step rectified (Liu et al., 2020)."""

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
    check_nonnegative,
    check_number,
    check_unit_interval,
    is_traced,
)

__all__ = ["radam", "RAdamState"]


@optimizer_state
class RAdamState(NamedTuple):
    m: Packed                    # first moment, like params
    v: Packed                    # second moment, like params


def _sma_length(beta_2: float):
    """`t -> rho_t`, the length of the approximated simple moving average at step `t`.

    `rho_t = rho_inf - 2 t b^t / (1 - b^t)` cancels badly in float32: for b = 0.999 both
    terms are ~2000 and float32(0.999) alone moves the result by ~0.04, enough to switch
    the rectification one step early or late. With `s = -log b` it equals
    `(rho_inf - 2/s) + (2/s) f(t s)`, `f(x) = 1 - x / (e^x - 1)`: the constants are
    float64, and `f` is a series for `x < 1` (no cancellation) and direct above.
    """
    if is_traced(beta_2):   # optax.inject_hyperparams under jit: float32, in the graph
        s = -jnp.log(jnp.maximum(beta_2, jnp.finfo(jnp.float32).tiny))
    elif beta_2 == 0.0:   # rho_t = rho_inf = 1 for every t
        return lambda t: jnp.ones_like(t)
    else:
        s = -math.log(beta_2)
    offset = (2.0 / (1.0 - beta_2) - 1.0) - 2.0 / s

    def rho(t):
        x = t * s
        xs = jnp.minimum(x, 1.0)
        x2 = xs * xs
        # x/2 - x^2/12 + x^4/720 - x^6/30240 + x^8/1209600 (Bernoulli numbers)
        series = xs * (0.5 - xs * (1 / 12 - x2 * (1 / 720 - x2 * (1 / 30240 - x2 / 1209600))))
        xd = jnp.maximum(x, 1.0)
        direct = 1.0 - xd / jnp.expm1(xd)
        return offset + (2.0 / s) * jnp.where(x < 1.0, series, direct)

    return rho


@with_options
def radam(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    threshold: float = 5.0,
    *,
    options: Options,
) -> Transform:
    r"""Rectified Adam (RAdam): SGD with momentum until Adam's step variance is tractable.

    With step :math:`t = \text{count} + 1`,
    :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`:

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \qquad
        \hat m = m / (1-\beta_1^t), \quad \hat v = v / (1-\beta_2^t) \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\,\rho_\infty}
                          {(\rho_\infty - 4)(\rho_\infty - 2)\,\rho_t}} \\
        \theta &\leftarrow \theta - \eta\, r_t\, \hat m / (\sqrt{\hat v} + \epsilon)
            \quad\text{if } \rho_t \ge \text{threshold}, \qquad
        \theta \leftarrow \theta - \eta\, \hat m \quad\text{otherwise.}

    Epsilon is added to the bias-corrected root (optax's and PyTorch's placement, not
    Keras Adam's "epsilon hat"). :math:`\rho_t` is a scalar of the step; kopt evaluates
    it without float32 cancellation, so the switch happens at the step exact arithmetic
    gives (optax 0.2.8 computes it from float32 :math:`\beta_2` and, for 0.999, gets it
    about 0.04 low). For :math:`\beta_2 = 0.999` the first rectified step is :math:`t = 6`.
    Weight decay is decoupled (``weight_decay``), as for every kopt optimizer.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the first moment, in [0, 1]. Default 0.9.
      beta_2: decay of the second moment, in [0, 1). Default 0.999.
      epsilon: added to the bias-corrected root of the second moment. Default 1e-8.
      threshold: the adaptive step is used once :math:`\rho_t \ge` threshold; it must be
        >= 4, where :math:`r_t` becomes real. Default 5.0, the authors' code (Algorithm 2
        of the paper says :math:`\rho_t > 4`).
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    State: `RAdamState` with slots `m`, `v` (this is also the stateful `get_weights`
    order after the iteration count).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.radam(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond"
    (ICLR 2020), Algorithm 2; https://arxiv.org/abs/1908.03265.
    """
    check_unit_interval("beta_1", beta_1)
    check_number("beta_2", beta_2, low=0, high=1, high_open=True,
                 message="`beta_2` must be >= 0 and < 1 for RAdam (rho_inf = 2 / (1 - beta_2) - 1).")
    check_nonnegative("epsilon", epsilon)
    check_number("threshold", threshold, low=4,
                 message="`threshold` must be a number >= 4 (the rectification term needs rho_t >= 4).")
    if not is_traced(beta_2):
        beta_2 = float(beta_2)   # the constants below in float64

    rho = _sma_length(beta_2)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    # r_t^2 = scale * (rho_t - 4)(rho_t - 2) / rho_t; with rho_inf <= 4 it is never used.
    if is_traced(beta_2):
        safe = jnp.where(rho_inf > 4.0, rho_inf, 5.0)
        scale = jnp.where(rho_inf > 4.0, safe / ((safe - 4.0) * (safe - 2.0)), 0.0)
    else:
        scale = rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0)) if rho_inf > 4.0 else 0.0

    def step(g, s, lr, t):
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = s["v"] + (jnp.square(g) - s["v"]) * (1 - beta_2)
        m_hat = m / (1 - beta_1**t)
        rho_t = rho(t)
        r = jnp.sqrt(jnp.maximum(scale * (rho_t - 4.0) * (rho_t - 2.0) / rho_t, 0.0))
        adaptive = r / (jnp.sqrt(v / (1 - beta_2**t)) + epsilon)
        factor = jnp.where(rho_t >= threshold, adaptive, jnp.ones_like(adaptive))
        return -lr * m_hat * factor, {"m": m, "v": v}

    rule = Rule(slots=("m", "v"), step=step, nonnegative=("v",))
    return elementwise_transform(
        rule, RAdamState, learning_rate, options,
    )
