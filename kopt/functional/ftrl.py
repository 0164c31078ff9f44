"""FTRL-Proximal, as `keras.optimizers.Ftrl`."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_number

__all__ = ["ftrl", "FtrlState"]


@optimizer_state
class FtrlState(NamedTuple):
    accumulator: Packed          # sum of g^2 (from initial_accumulator_value), like params
    linear: Packed               # the linear term z, like params

    # get_weights lists each variable's accumulator and linear together, as tf.keras did.
    weights_by_variable = True


@with_options
def ftrl(
    learning_rate=0.001,
    learning_rate_power: float = -0.5,
    initial_accumulator_value: float = 0.1,
    l1_regularization_strength: float = 0.0,
    l2_regularization_strength: float = 0.0,
    l2_shrinkage_regularization_strength: float = 0.0,
    beta: float = 0.0,
    *,
    options: Options,
) -> Transform:
    r"""FTRL-Proximal with Keras 3's formula; the new param is solved from the state.

    With :math:`p` = `learning_rate_power`, :math:`\lambda_1, \lambda_2, \lambda_s` the l1,
    l2 and l2-shrinkage strengths, accumulator :math:`n` (from
    `initial_accumulator_value`) and linear term :math:`z` (from 0):

    .. math::
        \tilde g &= g + 2 \lambda_s \theta, \qquad n' = n + g^2 \\
        z &\leftarrow z + \tilde g - \frac{n'^{-p} - n^{-p}}{\eta}\, \theta, \qquad
        n \leftarrow n' \\
        \theta &\leftarrow \frac{\operatorname{clip}(z, -\lambda_1, \lambda_1) - z}
            {n'^{-p} / \eta + 2 \lambda_2 + \beta / \eta}

    The rule reads the params, so `update` needs them. With `weight_decay` it sees them
    after the decay, as Keras's does. The learning rate must be > 0 (it divides).

    Since the param is solved from :math:`z` and :math:`n` every step, low-precision
    state (`state_dtype`) rounds the params themselves, not only the step: with 'int8'
    they are about as precise as the 8-bit :math:`z` (a few % of its block's largest
    element), with 'bfloat16' to about 3 significant digits.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      learning_rate_power: how the per-coordinate rate shrinks, <= 0; 0 gives a fixed
        rate. Default -0.5.
      initial_accumulator_value: starting value of the accumulator, >= 0. Default 0.1.
      l1_regularization_strength: >= 0. Default 0.0.
      l2_regularization_strength: >= 0; a stabilising L2 penalty. Default 0.0.
      l2_shrinkage_regularization_strength: >= 0; an L2 penalty on the magnitude of the
        params, added to the gradient. Default 0.0.
      beta: the :math:`\beta` of the paper's per-coordinate rate. Default 0.0.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.ftrl(0.1, l1_regularization_strength=0.01)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)

    Reference: McMahan et al., "Ad Click Prediction: a View from the Trenches" (KDD 2013),
    Algorithm 1; `keras.optimizers.Ftrl`.
    """
    # Keras 3's messages.
    check_number("learning_rate_power", learning_rate_power, high=0,
                 message="`learning_rate_power` needs to be negative or zero.")
    for name, value in (("initial_accumulator_value", initial_accumulator_value),
                        ("l1_regularization_strength", l1_regularization_strength),
                        ("l2_regularization_strength", l2_regularization_strength),
                        ("l2_shrinkage_regularization_strength",
                         l2_shrinkage_regularization_strength)):
        check_number(name, value, low=0, message=f"`{name}` needs to be positive or zero.")
    check_nonnegative("beta", beta)
    power = -learning_rate_power
    l1 = l1_regularization_strength

    def step(g, s, lr, t, var):
        del t
        l2 = l2_regularization_strength + beta / (2.0 * lr)
        shrunk = g + (2 * l2_shrinkage_regularization_strength) * var
        accumulator = s["accumulator"] + g * g
        new_root = jnp.power(accumulator, power)
        linear = s["linear"] + (
            shrunk - ((new_root - jnp.power(s["accumulator"], power)) / lr) * var
        )
        quadratic = new_root / lr + 2 * l2
        new_var = (jnp.clip(linear, -l1, l1) - linear) / quadratic
        return new_var - var, {"accumulator": accumulator, "linear": linear}

    rule = Rule(
        slots=("accumulator", "linear"), step=step,
        fill={"accumulator": initial_accumulator_value}, needs_params=True,
        nonnegative=("accumulator",),
    )
    return elementwise_transform(
        rule, FtrlState, learning_rate, options,
    )
