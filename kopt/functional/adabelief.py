"""AdaBelief: Adam with the step scaled by the belief in the gradient (Zhuang et al., 2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_nonnegative, check_unit_interval

__all__ = ["adabelief", "AdaBeliefState"]


@optimizer_state
class AdaBeliefState(NamedTuple):
    m: Packed                    # first moment, like params
    s: Packed                    # second moment of g - m (plus epsilon), like params


@with_options
def adabelief(
    learning_rate=0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-16,
    *,
    options: Options,
) -> Transform:
    r"""AdaBelief: Adam whose second moment tracks :math:`(g - m)^2`, the "belief".

    With step :math:`t = \text{count} + 1`:

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        s \leftarrow \beta_2 s + (1-\beta_2) (g - m)^2 + \epsilon \\
        \hat m &= m / (1-\beta_1^t), \qquad \hat s = s / (1-\beta_2^t), \qquad
        \theta \leftarrow \theta - \eta\, \hat m / (\sqrt{\hat s} + \epsilon)

    As in Algorithm 2 of the paper and the authors' code, one epsilon enters twice: it is
    added to the stored :math:`s` on every step, and to the root (optax's `eps_root` and
    `eps`, both set to `epsilon`). The paper's variants (AMSGrad, rectification) are not
    included. Weight decay is decoupled (``weight_decay``), as the authors' code does by
    default (`weight_decouple=True`).

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      beta_1: decay of the first moment, in [0, 1]. Default 0.9.
      beta_2: decay of the belief :math:`s`, in [0, 1]. Default 0.999.
      epsilon: see above. Default 1e-16, the paper's.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps, state_dtype, min_quantized_size: as
      in `kopt.functional.sgd`.

    State: `AdaBeliefState` with slots `m`, `s` (also the stateful `get_weights` order
    after the iteration count).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.adabelief(1e-3)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients" (NeurIPS 2020), Algorithm 2; https://arxiv.org/abs/2010.07468.
    """
    check_unit_interval("beta_1", beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)

    def step(g, slots, lr, t):
        m = slots["m"] + (g - slots["m"]) * (1 - beta_1)
        s = slots["s"] + (jnp.square(g - m) - slots["s"]) * (1 - beta_2) + epsilon
        m_hat = m / (1 - beta_1**t)
        s_hat = s / (1 - beta_2**t)
        return -lr * m_hat / (jnp.sqrt(s_hat) + epsilon), {"m": m, "s": s}

    rule = Rule(slots=("m", "s"), step=step, nonnegative=("s",))
    return elementwise_transform(
        rule, AdaBeliefState, learning_rate, options,
    )
