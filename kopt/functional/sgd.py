"""SGD with optional (Nesterov) momentum, as `keras.optimizers.SGD`."""

from __future__ import annotations

from typing import NamedTuple

import jax

from kopt.functional.base import Transform, by_slot
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.states import optimizer_state
from kopt.functional.validation import check_unit_interval, maybe_nonzero

__all__ = ["sgd", "SGDState"]


@optimizer_state
class SGDState(NamedTuple):
    momentum: Packed | None = None   # velocity, like params; None when momentum == 0


@with_options
def sgd(
    learning_rate=0.01,
    momentum: float = 0.0,
    nesterov: bool = False,
    *,
    options: Options,
) -> Transform:
    r"""Stochastic gradient descent, with Keras 3's momentum formulation.

    Without momentum: :math:`\theta \leftarrow \theta - \eta g`.
    With momentum :math:`\mu > 0` (velocity :math:`v_0 = 0`):

    .. math::
        v \leftarrow \mu v - \eta g, \qquad
        \theta \leftarrow \theta + v \quad\text{or, if nesterov,}\quad
        \theta \leftarrow \theta + \mu v - \eta g .

    Every numeric argument may be a Python number, a numpy scalar or 0-d array, or a 0-d
    jax array (traced under `optax.inject_hyperparams`); concrete values are checked
    (NaN and, except for the clip options, inf are refused with a ValueError naming the
    argument).

    The cross-cutting arguments (from `weight_decay` on) are the fields of
    `kopt.functional.Options`, shared by every optimizer.

    Args:
      learning_rate: float, schedule, callable `step -> lr`, or zero-argument callable
        `() -> lr` (Keras's form); both callables are evaluated, traced, on every update
        and must return a scalar. A jax array is used as given on every update (how
        `optax.inject_hyperparams` passes it); see `kopt.functional.learning_rate`.
        Default 0.01.
      momentum: float in [0, 1]. Default 0.0 (no velocity slot is kept). Under
        `optax.inject_hyperparams`, whether the slot exists is decided by the value at
        `init` (see `kopt.functional.base.by_slot`).
      nesterov: use Nesterov momentum. Default False.
      weight_decay: decoupled decay `theta -= theta * weight_decay * lr`. Default None.
      weight_decay_mask: pytree of bools (or callable params -> pytree) choosing the leaves
        that decay. Default None (all).
      clipnorm, clipvalue, global_clipnorm: Keras's clipping; at most one. Default None.
        0 and `inf` mean no clipping; NaN is refused.
      bucket_threshold: leaves with at most this many elements share flat state buffers;
        0 turns bucketing off. Default None: automatic, leaves of up to 65,536 elements
        on every backend (see `kopt.functional.buckets`).
      loss_scale_factor: gradients are divided by it before anything else (the loss was
        multiplied by it; see the stateful `scale_loss`). Default None.
      use_ema: keep `ema`, Keras's moving average of the params after each step,
        `ema = m * ema + (1 - m) * param` with `m = 0` on the first update and
        `ema_momentum` after. Needs `params`. Default False.
      ema_momentum: float in [0, 1]. Default 0.99.
      ema_overwrite_frequency: int >= 1 or None: every that many updates the returned
        updates move the params onto the EMA. Default None.
      gradient_accumulation_steps: int >= 2 or None. Sum the gradients of that many
        calls; every that-many-th call applies the step to their mean (clip, rule and
        weight decay run only then) and resets the sum; other calls return zero updates
        and leave the state but `accum`/`micro_step` unchanged. `count` counts real
        updates; schedules read the raw call count `micro_step`, as Keras 3. Default None.
      state_dtype: how the per-parameter state is stored; the update is computed in
        float32 (or the state's wider dtype) either way. None (default): the param's
        dtype, at least float32. 'float32': float32. 'bfloat16': 2 bytes per slot
        element. 'int8': block-wise 8-bit quantisation (Dettmers et al., 2021) in blocks
        of 2048 elements, each with a float32 scale, with a signed non-linear map (an
        unsigned one for second moments): about 1 byte per slot element; leaves smaller
        than `min_quantized_size` keep float32 state. Both round the new state
        stochastically (unbiased), from a hash of (element, step, `state.seed`, slot), so
        runs are reproducible and resume exactly. `ema` and `accum` stay full precision.
        See `kopt.functional.quantize`. Default None.
      min_quantized_size: the smallest leaf, in elements, whose state 'int8' quantises.
        Default 2048 (one block).

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.sgd(0.1, momentum=0.9)
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)

    Reference: `keras.optimizers.SGD` (Keras 3).
    """
    check_unit_interval("momentum", momentum)
    def build(has_slot):
        def update(g, new, lr, t):
            del t
            v = new["momentum"]
            return (-g * lr + v * momentum) if nesterov else v

        def step(g, slots, lr, t):
            if not has_slot:
                return -lr * g, {}
            new = {"momentum": -g * lr + slots["momentum"] * momentum}
            return update(g, new, lr, t), new

        rule = Rule(slots=("momentum",) if has_slot else (), step=step, update=update)
        return lambda: elementwise_transform(rule, SGDState, learning_rate, options)

    if isinstance(momentum, jax.Array):   # optax.inject_hyperparams: the state decides
        return by_slot("momentum", build(True), build(False), maybe_nonzero(momentum))
    return build(bool(momentum))()
