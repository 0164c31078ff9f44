"""Schedule-Free AdamW, as `keras.optimizers.ScheduleFreeAdamW`."""

from __future__ import annotations

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
    check_number,
    check_unit_interval,
    is_traced,
)

__all__ = ["schedule_free_adamw", "schedule_free_eval_params", "ScheduleFreeAdamWState"]


@optimizer_state(seed=False)
class ScheduleFreeAdamWState(NamedTuple):
    z: Packed                    # the SGD sequence (Keras's `momentum`), like params
    v: Packed                    # second moment (Keras's `velocity`), like params


def _check_beta_1(beta_1):
    check_number("beta_1", beta_1, low=0, low_open=True, high=1, message=(
        "`beta_1` must be in (0, 1]: the averaged point is recovered as "
        "(y - (1 - beta_1) z) / beta_1."))


@with_options(exclude=('state_dtype', 'min_quantized_size'))
def schedule_free_adamw(
    learning_rate=0.0025,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    warmup_steps: int = 0,
    *,
    options: Options,
) -> Transform:
    r"""Schedule-Free AdamW, in Keras 3's form.

    Three sequences: the params are :math:`y` (where gradients are taken), the state
    holds :math:`z` (the SGD sequence, initialised to the params) and :math:`v`; the
    average :math:`x`, the point to evaluate, is not stored but recovered from
    :math:`y = (1-\beta_1) z + \beta_1 x`. With step :math:`t = \text{count} + 1`:

    .. math::
        \eta_t &= \eta \min(t / \text{warmup\_steps}, 1)
            \quad(\eta \text{ itself when warmup\_steps} = 0) \\
        v &\leftarrow v + (1-\beta_2)(g^2 - v), \qquad
        z' = z - \eta_t\, g / \left(\sqrt{v / (1-\beta_2^t)} + \epsilon\right) \\
        x &= (y - (1-\beta_1) z) / \beta_1, \qquad
        x' = (1 - 1/t)\, x + z' / t \\
        y &\leftarrow (1-\beta_1) z' + \beta_1 x', \qquad z \leftarrow z'

    Keras averages with the uniform weight :math:`1/t` (the paper weights by
    :math:`\eta_t^2`). Decoupled weight decay, where enabled, scales :math:`y` by
    :math:`1 - \lambda\eta` before the step (so :math:`x` is recovered from the decayed
    :math:`y`), as Keras's order of operations gives.

    **Evaluation.** Train with the params (:math:`y`); evaluate, and export, the average
    :math:`x`, which `schedule_free_eval_params(params, state, beta_1)` returns. Keep training from
    :math:`y`, not from :math:`x`. The stateful `ScheduleFreeAdamW` has `eval_values()`.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.0025.
      beta_1: interpolation between :math:`z` and :math:`x`, in (0, 1]. Default 0.9.
      beta_2: decay of the second moment. Default 0.999.
      epsilon: added to the bias-corrected root. Default 1e-8.
      warmup_steps: linear warmup of the learning rate over this many updates (0: none).
        Default 0.
      weight_decay, weight_decay_mask, clipnorm, clipvalue, global_clipnorm,
      bucket_threshold, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps: as in `kopt.functional.sgd`.

    `update` always needs `params` (the step reads :math:`y`).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> from kopt.functional.schedule_free import schedule_free_eval_params
      >>> tx = kopt.functional.schedule_free_adamw(0.01)
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kopt.functional.apply_updates(params, updates)
      >>> eval_params = schedule_free_eval_params(params, state, beta_1=0.9)

    Reference: Defazio et al., "The Road Less Scheduled" (2024, arXiv:2405.15682);
    `keras.optimizers.ScheduleFreeAdamW`.
    """
    _check_beta_1(beta_1)
    check_unit_interval("beta_2", beta_2)
    check_nonnegative("epsilon", epsilon)
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0,
                             message="`warmup_steps` must be an integer >= 0.")

    def step(g, s, lr, t, y):
        if is_traced(warmup_steps):   # optax.inject_hyperparams under jit
            w = jnp.maximum(warmup_steps, 1).astype(t.dtype)
            lr = jnp.where(warmup_steps > 0, lr * jnp.minimum(t / w, 1.0), lr)
        elif warmup_steps > 0:
            lr = lr * jnp.minimum(t / warmup_steps, 1.0)
        v = s["v"] + (jnp.square(g) - s["v"]) * (1 - beta_2)
        z = s["z"] - lr * g / (jnp.sqrt(v / (1 - beta_2**t)) + epsilon)
        w = 1 / t
        x = (y - (1 - beta_1) * s["z"]) / beta_1
        x = (1 - w) * x + w * z
        return (1 - beta_1) * z + beta_1 * x - y, {"z": z, "v": v}

    tx = elementwise_transform(
        Rule(slots=("z", "v"), step=step, needs_params=True), ScheduleFreeAdamWState,
        learning_rate, options)

    def init_fn(params):
        state = tx.init(params)
        layout = state.z.layout
        # z starts at the params: a copy, so that state and params never share a buffer.
        z = [jnp.array(p, copy=True) for p in layout.treedef.flatten_up_to(params)]
        return state._replace(z=Packed.from_leaves(layout, z))

    return Transform(init_fn, tx.update)


def schedule_free_eval_params(params, state: ScheduleFreeAdamWState, beta_1: float = 0.9):
    r"""The averaged point :math:`x = (y - (1-\beta_1) z) / \beta_1` to evaluate at.

    `params` are the training params :math:`y` and `state` the `schedule_free_adamw`
    state after the same update; `beta_1` must be the one the transform was built with.
    Returns a pytree like `params`, in the params' dtypes. Before the first update
    :math:`z = y`, so :math:`x = y`. Pure: use it inside or outside jit.
    """
    _check_beta_1(beta_1)
    layout = state.z.layout
    ys = layout.treedef.flatten_up_to(params)
    xs = []
    for y, z in zip(ys, state.z.to_leaves()):
        y = jnp.asarray(y)
        x = (y.astype(z.dtype) - (1 - beta_1) * z) / beta_1
        xs.append(x.astype(y.dtype))
    return layout.treedef.unflatten(xs)
