"""Adadelta, as `keras.optimizers.Adadelta`."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adadelta", "AdadeltaState"]


@optimizer_state
class AdadeltaState(NamedTuple):
    accum_grad: Packed           # running mean of g^2, like params
    accum_var: Packed            # running mean of the squared step, like params


@with_options
def adadelta(
    learning_rate=0.001,
    rho: float = 0.95,
    epsilon: float = 1e-7,
    *,
    options: Options,
) -> Transform:
    r"""Adadelta with Keras 3's formula, scaled by a learning rate.

    .. math::
        E[g^2] &\leftarrow \rho E[g^2] + (1-\rho) g^2 \\
        \Delta &= -\frac{\sqrt{E[\Delta^2] + \epsilon}}{\sqrt{E[g^2] + \epsilon}}\, g
            \quad\text{(with } E[\Delta^2] \text{ from the previous step)} \\
        E[\Delta^2] &\leftarrow \rho E[\Delta^2] + (1-\rho) \Delta^2, \qquad
        \theta \leftarrow \theta + \eta \Delta

    Zeiler's original has no learning rate, which is `learning_rate=1.0` here.

    Defaults differ from optax's. kopt keeps Keras 3's `rho=0.95`, `epsilon=1e-7`; optax's
    `adadelta` uses `rho=0.9`, `eps=1e-6`. The update rule is the same: with equal
    settings the two follow the same trajectory to float32 rounding. With Keras's defaults
    the first steps are tiny (about `sqrt(epsilon) * lr`) and grow slowly. So at
    `learning_rate=0.1`, the parabola of optax's convergence test is still far from its
    minimum after 10,000 steps (one coordinate moves from 10 to about 5.6), and optax does
    exactly the same with `rho=0.95, eps=1e-7`. Pass `rho=0.9, epsilon=1e-6` for optax's
    behaviour (it then converges at 0.1), or use a larger learning rate.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      rho: decay of both running means. Default 0.95.
      epsilon: added inside both square roots. Default 1e-7.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adadelta(1.0)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012);
    `keras.optimizers.Adadelta`.
    """
    check_unit_interval("rho", rho)
    check_nonnegative("epsilon", epsilon)

    def step(g, s, lr, t):
        del t
        accum_grad = rho * s["accum_grad"] + (1 - rho) * (g * g)
        delta = -(jnp.sqrt(s["accum_var"] + epsilon) * g) / jnp.sqrt(accum_grad + epsilon)
        accum_var = rho * s["accum_var"] + (1 - rho) * (delta * delta)
        return lr * delta, {"accum_grad": accum_grad, "accum_var": accum_var}

    rule = Rule(slots=("accum_grad", "accum_var"), step=step,
                nonnegative=("accum_grad", "accum_var"))
    return elementwise_transform(
        rule, AdadeltaState, learning_rate, options,
    )
