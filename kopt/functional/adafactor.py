"""Adafactor, as `keras.optimizers.Adafactor` (factored second moments, relative step)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed, state_dtype_for
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_number, check_positive

__all__ = ["adafactor", "AdafactorState"]


@optimizer_state(seed=False)
class AdafactorState(NamedTuple):
    r: Packed                    # row moments, param.shape[:-1]; a 0-d zero for rank < 2
    c: Packed                    # column moments, param.shape[:-2] + param.shape[-1:]; 0-d for rank < 2
    v: Packed                    # second moment, like params (rebuilt from r and c where factored)


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _init_slot(name, param, i):
    """`r` and `c` drop the last and the second-to-last axis; rank < 2 gets a 0-d zero."""
    del i
    dtype = state_dtype_for(param.dtype)
    shape = param.shape
    if name == "v":
        return jnp.zeros_like(param, dtype=dtype)
    if len(shape) < 2:
        return jnp.zeros((), dtype)
    # A reduction of the param (not a fresh `zeros`) keeps its sharding, so the state's
    # type does not change after the first step (lax.scan, accumulation's lax.cond).
    return jnp.zeros_like(param, dtype=dtype).sum(axis=-1 if name == "r" else -2)


@with_options(exclude=('state_dtype', 'min_quantized_size'))
def adafactor(
    learning_rate=0.001,
    beta_2_decay: float = -0.8,
    epsilon_1: float = 1e-30,
    epsilon_2: float = 1e-3,
    clip_threshold: float = 1.0,
    relative_step: bool = True,
    *,
    options: Options,
) -> Transform:
    r"""Adafactor as Keras 3 computes it: no first moment, factored second moments.

    With step :math:`t = \text{count} + 1`, :math:`\operatorname{RMS}(x) = \sqrt{\operatorname{mean}(x^2)}`
    over the whole tensor, :math:`\theta` the param (after weight decay) and
    :math:`G = g^2 + \epsilon_1`:

    .. math::
        \rho_t &= \min(\eta, 1/\sqrt{t}), \qquad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta))\, \rho_t, \qquad
        \hat\beta_t = 1 - t^{\,\text{beta\_2\_decay}} \\
        \text{rank} \ge 2:\quad R &\leftarrow \hat\beta_t R + (1-\hat\beta_t)\operatorname{mean}_{-1} G,
        \quad C \leftarrow \hat\beta_t C + (1-\hat\beta_t)\operatorname{mean}_{-2} G, \\
        V &= \frac{R}{\operatorname{mean}_{-1} R}[\dots, :, \text{None}]\; C[\dots, \text{None}, :] \\
        \text{rank} < 2:\quad V &\leftarrow \hat\beta_t V + (1-\hat\beta_t)\, G \\
        U &= g / \sqrt{V}, \qquad
        \theta \leftarrow \theta - \alpha_t\, U / \max(1, \operatorname{RMS}(U) / d)

    with :math:`d` = `clip_threshold`. Tensors of rank >= 2 are factored over their last
    two axes (`R` has the shape of `param.shape[:-1]`, `C` of
    `param.shape[:-2] + param.shape[-1:]`); the others keep a full `V` and, as in Keras,
    a 0-d placeholder for `R` and `C`. Like Keras, the state also holds `V` for factored
    tensors, although it is rebuilt from `R` and `C` every step.

    **Deviation from Keras, for finiteness.** Where a gradient matrix has an all-zero row
    and an all-zero column, the factored :math:`V` underflows to 0 at their crossing
    (:math:`\epsilon_1^2 = 10^{-60}`), and Keras's :math:`g/\sqrt{V}` is 0/0: NaN from the
    first step, which the RMS clipping spreads to the whole tensor. kopt computes those
    elements (only those: wherever :math:`V > 0` it is Keras's expression) as
    :math:`g \cdot (R/\operatorname{mean} R)^{-1/2}\, C^{-1/2}`, as optax's factored
    Adafactor does everywhere, and a zero gradient there gives a zero step. The update
    stays finite; wherever Keras's is finite, kopt's equals it.

    `relative_step`: Keras 3 caps the step size at :math:`1/\sqrt{t}` whatever the flag
    says (it takes the minimum once under `relative_step` with a constant rate, and again
    unconditionally), so the flag does not change the numbers, here as in Keras; it is
    kept for the signature and the config.

    The rule reads the params (:math:`\operatorname{RMS}(\theta)`), so `update` needs them.
    It sees one whole tensor at a time, so `bucket_threshold` is accepted and ignored.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_2_decay: exponent of the second-moment decay :math:`1 - t^{d}`, <= 0.
        Default -0.8.
      epsilon_1: added to :math:`g^2`, >= 0. Default 1e-30.
      epsilon_2: lower bound on :math:`\operatorname{RMS}(\theta)` in the step size, >= 0.
        Default 1e-3.
      clip_threshold: update clipping threshold :math:`d`, > 0; independent of
        `clipnorm`, `clipvalue` and `global_clipnorm`. Default 1.0.
      relative_step: a bool; see above. Default True.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps: as in `kopt.functional.sgd`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adafactor(0.01)
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> state.r.leaf(1).shape, state.c.leaf(1).shape, state.r.leaf(0).shape
      ((4,), (3,), ())
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost" (ICML 2018); `keras.optimizers.Adafactor`.
    """
    check_number("beta_2_decay", beta_2_decay, high=0, message=(   # arrays: inject_hyperparams
        "`beta_2_decay` must be a number <= 0 (the second-moment decay is 1 - t**beta_2_decay)."))
    check_nonnegative("epsilon_1", epsilon_1)
    check_nonnegative("epsilon_2", epsilon_2)
    check_positive("clip_threshold", clip_threshold)
    if not isinstance(relative_step, bool):
        raise ValueError(f"`relative_step` must be a bool. Received: relative_step={relative_step!r}")

    def step(g, s, lr, t, param):
        rho = jnp.minimum(lr, 1 / jnp.sqrt(t))
        alpha = jnp.maximum(epsilon_2, _rms(param)) * rho
        g2 = jnp.square(g) + epsilon_1
        beta = 1 - t**beta_2_decay
        if g.ndim >= 2:
            r = beta * s["r"] + (1 - beta) * jnp.mean(g2, axis=-1)
            c = beta * s["c"] + (1 - beta) * jnp.mean(g2, axis=-2)
            row = r / jnp.mean(r, axis=-1, keepdims=True)
            v = row[..., :, None] * c[..., None, :]
            # Keras's g / sqrt(v), except where the product v underflowed to 0 (a zero row
            # meets a zero column: 1e-30 * 1e-30): there the factors' inverse roots are
            # multiplied instead, which stays finite, and a zero gradient gives 0.
            inv = lax.rsqrt(row)[..., :, None] * lax.rsqrt(c)[..., None, :]
            fallback = jnp.where(g == 0, jnp.zeros_like(g), g * inv)
            u = jnp.where(v > 0, g / jnp.sqrt(jnp.where(v > 0, v, 1)), fallback)
        else:
            r, c = s["r"], s["c"]
            v = beta * s["v"] + (1 - beta) * g2
            u = g / jnp.sqrt(v)
        u = u / jnp.maximum(1, _rms(u) / clip_threshold)
        return -alpha * u, {"r": r, "c": c, "v": v}

    rule = Rule(slots=("r", "c", "v"), step=step, needs_params=True, per_leaf=True, init=_init_slot)
    return elementwise_transform(
        rule, AdafactorState, learning_rate, options,
    )
