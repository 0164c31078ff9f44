"""Nadam, as `keras.optimizers.Nadam`: the 0.96^t momentum schedule and its running product."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["nadam", "NadamState"]

_DECAY = 0.96   # Keras's (and Dozat's) momentum-schedule base


@optimizer_state
class NadamState(NamedTuple):
    momentum_cache: jax.Array    # shape=(), float32: prod of mu_1..mu_count (Keras's u_product)
    m: Packed                    # first moment, like params (Keras 3: "momentum")
    v: Packed                    # second moment, like params (Keras 3: "velocity")


@with_options
def nadam(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    *,
    options: Options,
) -> Transform:
    r"""Nadam (Adam with Nesterov momentum) with Keras 3's momentum schedule.

    With step :math:`t = \text{count} + 1`, the momentum schedule
    :math:`\mu_t = \beta_1 (1 - \tfrac12\, 0.96^{t})` and its running product
    :math:`\Pi_t = \prod_{i \le t} \mu_i` (the state's `momentum_cache`, :math:`\Pi_0 = 1`):

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        \hat m &= \frac{\mu_{t+1}\, m}{1 - \Pi_t \mu_{t+1}} + \frac{(1-\mu_t)\, g}{1 - \Pi_t},
        \qquad \hat v = \frac{v}{1-\beta_2^t} \\
        \theta &\leftarrow \theta - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)

    `momentum_cache` is one float32 scalar shared by all params; it is the
    `momentum_cache` entry right after the iteration count in `get_weights`.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: base of the momentum schedule. Default 0.9.
      beta_2: decay of the second moment. Default 0.999.
      epsilon: added to the bias-corrected root. Default 1e-7.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.nadam(1e-3)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> round(float(state.momentum_cache), 6)  # 0.9 * (1 - 0.5 * 0.96)
      0.468

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR workshop 2016);
    `keras.optimizers.Nadam`.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def advance(scalars, t, lr):
        del lr
        # Keras's `_backend_update_step`: once per update, before the per-variable steps.
        schedule = 1.0 - 0.5 * _DECAY ** t.astype(jnp.float32)
        return {"momentum_cache": scalars["momentum_cache"] * beta_1 * schedule}

    def step(g, s, lr, t):
        u_t = beta_1 * (1.0 - 0.5 * _DECAY**t)
        u_next = beta_1 * (1.0 - 0.5 * _DECAY ** (t + 1))
        u_product = s["momentum_cache"]   # already includes u_t
        m = s["m"] + (g - s["m"]) * (1 - beta_1)
        v = s["v"] + (g * g - s["v"]) * (1 - beta_2)
        m_hat = (u_next * m) / (1 - u_product * u_next) + ((1 - u_t) * g) / (1 - u_product)
        v_hat = v / (1 - beta_2**t)
        return -(m_hat * lr) / (jnp.sqrt(v_hat) + epsilon), {"m": m, "v": v}

    rule = Rule(slots=("m", "v"), step=step, scalars={"momentum_cache": 1.0}, advance=advance,
                nonnegative=("v",))
    return elementwise_transform(
        rule, NadamState, learning_rate, options,
    )
