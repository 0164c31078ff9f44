"""LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman & Ginsburg, 2017)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import (
    check_nonnegative,
    check_positive,
    check_unit_interval,
    maybe_nonzero,
)
from kopt.functional.weight_decay import resolve_mask

__all__ = ["lars", "LARSState"]


@optimizer_state(seed=False)
class LARSState(NamedTuple):
    momentum: Packed | None = None   # velocity, like params; None when momentum == 0


def _lars_rule(momentum, nesterov, trust_coefficient, coupled_weight_decay, epsilon,
               adapt, decay, has_slot) -> Rule:
    """`adapt` and `decay`: a bool per param leaf, or None for all."""

    def step(g, s, lr, t, param, *, leaf, layout):
        del t, layout
        if maybe_nonzero(coupled_weight_decay) and (decay is None or decay[leaf]):
            g = g + coupled_weight_decay * param
        if adapt is None or adapt[leaf]:
            w_norm = jnp.sqrt(jnp.sum(jnp.square(param)))
            g_norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            ratio = trust_coefficient * w_norm / (g_norm + epsilon)
            g = g * jnp.where((w_norm > 0) & (g_norm > 0), ratio, jnp.ones_like(ratio))
        if not has_slot:
            return -lr * g, {}
        v = s["momentum"] * momentum - lr * g
        delta = v * momentum - lr * g if nesterov else v
        return delta, {"momentum": v}

    return Rule(slots=("momentum",) if has_slot else (), step=step, needs_params=True,
                per_leaf=True, leaf_info=True)


@with_options(exclude=('state_dtype', 'min_quantized_size'))
def lars(
    learning_rate=1.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    trust_coefficient: float = 0.001,
    coupled_weight_decay: float = 0.0,
    epsilon: float = 0.0,
    trust_ratio_mask=None,
    *,
    options: Options,
) -> Transform:
    r"""LARS: momentum SGD whose step for each tensor is scaled by a trust ratio.

    For each param tensor :math:`w` with gradient :math:`g` (norms are over the tensor):

    .. math::
        \tilde g &= g + \lambda w, \qquad
        r = \frac{\eta_{\text{tc}}\, \lVert w \rVert}{\lVert \tilde g \rVert + \epsilon}
            \quad (r = 1 \text{ if } \lVert w \rVert = 0 \text{ or }
            \lVert \tilde g \rVert = 0) \\
        v &\leftarrow \mu v - \eta\, r\, \tilde g, \qquad
        w \leftarrow w + v \quad\text{or, if nesterov,}\quad
        w \leftarrow w + \mu v - \eta\, r\, \tilde g

    with :math:`\lambda` = `coupled_weight_decay`, :math:`\eta_{\text{tc}}` =
    `trust_coefficient`, :math:`\mu` = `momentum` (without momentum,
    :math:`w \leftarrow w - \eta r \tilde g`). The velocity has Keras SGD's sign.
    Algorithm 1 of the paper divides by :math:`\lVert g \rVert + \lambda \lVert w \rVert`;
    this is the form of optax's `lars` and of the SimCLR / TF Model Garden LARS, which
    take the norm of :math:`\tilde g`. Where `trust_ratio_mask` is False, :math:`r = 1`
    (plain momentum SGD: usually biases and normalisation scales). The step needs
    whole tensors, so LARS never buckets (`bucket_threshold` has no effect).

    Two weight decays: `coupled_weight_decay` is LARS's own, added to the gradient before
    the trust ratio (optax's `weight_decay`, TF Model Garden's `weight_decay_rate`); the
    cross-cutting `weight_decay` is Keras's decoupled decay,
    :math:`w \leftarrow w - \eta\,\text{weight\_decay}\, w` before the step, unscaled by
    the trust ratio. `weight_decay_mask` selects the leaves for both.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 1.0: the trust
        ratio makes each adapted tensor's step about `lr * trust_coefficient` times its
        norm. The paper's large-batch runs use 2 to 29 with warmup and polynomial decay.
      momentum: float in [0, 1]. Default 0.9 (no velocity slot is kept when 0).
      nesterov: use Nesterov momentum. Default False.
      trust_coefficient: :math:`\eta_{\text{tc}}`, > 0. Default 0.001, the paper's.
      coupled_weight_decay: :math:`\lambda \ge 0`. Default 0.0.
      epsilon: added to the gradient norm, >= 0. Default 0.0.
      trust_ratio_mask: None (every leaf adapts), a pytree of bools like params, or a
        callable `params -> pytree of bools`. Default None.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps: as in `kopt.functional.sgd`.

    State: `LARSState` with the slot `momentum` (absent when `momentum=0`; also the
    stateful `get_weights` order after the iteration count). `update` needs `params`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> tx = kopt.functional.lars(1.0, coupled_weight_decay=1e-4,
      ...                           trust_ratio_mask={"w": True, "b": False},
      ...                           weight_decay_mask={"w": True, "b": False})
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks"
    (2017), Algorithm 1; https://arxiv.org/abs/1708.03888.
    """
    check_unit_interval("momentum", momentum)
    check_positive("trust_coefficient", trust_coefficient)
    check_nonnegative("coupled_weight_decay", coupled_weight_decay)
    check_nonnegative("epsilon", epsilon)

    # A jax-array momentum (optax.inject_hyperparams) may be traced: the state says
    # whether there is a momentum slot (decided at init, see `kopt.functional.base.by_slot`).
    dynamic = isinstance(momentum, jax.Array)
    has_momentum = maybe_nonzero(momentum)

    def build(adapt, decay, has_slot=has_momentum):
        return elementwise_transform(
            _lars_rule(momentum, nesterov, trust_coefficient, coupled_weight_decay, epsilon,
                       adapt, decay, has_slot),
            LARSState, learning_rate, options,
        )

    plain = build(None, None)   # validates the shared arguments now
    masked_decay = maybe_nonzero(coupled_weight_decay) and options.weight_decay_mask is not None
    if trust_ratio_mask is None and not masked_decay and not dynamic:
        return plain

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        # The masks are resolved against `params` (a callable mask may read them), at
        # trace time; the rule then reads one Python bool per leaf.
        has = state.momentum is not None if dynamic else has_momentum
        if params is None:   # raises: LARS needs params
            return build(None, None, has).update(updates, state, params)
        treedef = jax.tree.structure(params)
        adapt = None
        if trust_ratio_mask is not None:
            try:
                adapt = resolve_mask(trust_ratio_mask, params, treedef)
            except ValueError as e:
                raise ValueError(
                    f"trust_ratio_mask must have the structure of params ({treedef}). "
                    f"Received: {trust_ratio_mask!r}") from e
        decay = resolve_mask(options.weight_decay_mask, params, treedef) if masked_decay else None
        return build(adapt, decay, has).update(updates, state, params)

    return Transform(plain.init, update_fn)
