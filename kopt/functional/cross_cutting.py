"""Keras 3's cross-cutting options as composable transforms.

Every kopt optimizer takes `loss_scale_factor`, `use_ema`/`ema_momentum`/
`ema_overwrite_frequency` and `gradient_accumulation_steps` as arguments; its engine
(`kopt.functional.elementwise`) runs exactly these transforms, in Keras 3's order, on
views of its state. They are also building blocks for `chain` and for optax transforms:

- `unscale_gradients(loss_scale_factor)`: divide the gradients by the factor; put it first.
- `ema(ema_momentum, ema_overwrite_frequency)`: keep an EMA of the params as they will be
  after this step's updates; put it last (it needs `params`).
- `accumulate_gradients(inner, steps)`: sum the gradients of `steps` calls and run `inner`
  on their mean on every `steps`-th call; other calls return zero updates and leave
  `inner`'s state unchanged. Unlike the `gradient_accumulation_steps` argument, the inner
  transform's schedules see its own (real-update) count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform, apply_updates, call_update, wider_dtype
from kopt.functional.clipping import EmptyState
from kopt.functional.validation import (
    maybe_nonzero,
    validate_accumulation,
    validate_ema,
    validate_loss_scale_factor,
)

__all__ = [
    "unscale_gradients", "ema", "EmaState", "accumulate_gradients", "AccumulateState",
]


def _is_none(x):
    return x is None


def unscale_gradients(loss_scale_factor: float) -> Transform:
    """`updates / loss_scale_factor`: undo a loss scaled by `loss_scale_factor`."""
    validate_loss_scale_factor(loss_scale_factor)

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: None if g is None else g / loss_scale_factor,
                            updates, is_leaf=_is_none), state

    return Transform(init_fn, update_fn)


class EmaState(NamedTuple):
    ema_count: jax.Array   # shape=(), int32: steps seen
    ema: Any               # the moving average, like params


def ema(ema_momentum: float = 0.99, ema_overwrite_frequency: int | None = None) -> Transform:
    r"""Keras 3's EMA of the params, as a transform placed last in a chain.

    With :math:`\theta'` the params after this step's updates and step :math:`k` (0-based):

    .. math::
        m_k = 0 \text{ if } k = 0 \text{ else } \mu, \qquad
        e \leftarrow m_k e + (1 - m_k)\,\theta'

    and every `ema_overwrite_frequency`-th step the returned updates move the params to
    :math:`e` (up to float rounding of `params + (e - params)`).
    """
    validate_ema(True, ema_momentum, ema_overwrite_frequency)

    def init_fn(params):
        return EmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("ema needs `params`: call update(updates, state, params).")
        new_p = jax.tree.map(lambda p, u: p if u is None else apply_updates(p, u),
                             params, updates, is_leaf=_is_none)
        first = state.ema_count == 0

        def avg(e, p):
            m = jnp.where(first, 0.0, ema_momentum).astype(e.dtype)
            return m * e + (1 - m) * jnp.asarray(p).astype(e.dtype)

        new_ema = jax.tree.map(avg, state.ema, new_p)
        if maybe_nonzero(ema_overwrite_frequency):
            overwrite = (state.ema_count + 1) % ema_overwrite_frequency == 0

            def move(u, p, e):
                p = jnp.asarray(p)
                dt = p.dtype if u is None else u.dtype
                wide = wider_dtype(p.dtype, e.dtype)
                to_ema = (e.astype(wide) - p.astype(wide)).astype(dt)
                return jnp.where(overwrite, to_ema, jnp.zeros_like(to_ema) if u is None else u)

            updates = jax.tree.map(move, updates, params, new_ema, is_leaf=_is_none)
        return updates, EmaState(state.ema_count + 1, new_ema)

    return Transform(init_fn, update_fn)


class AccumulateState(NamedTuple):
    count: jax.Array        # shape=(), int32: real updates (calls of `inner`)
    micro_step: jax.Array   # shape=(), int32: calls
    accum: Any              # gradient sum since the last real update, like params
    inner: Any              # the inner transform's state


def accumulate_gradients(inner: Transform, gradient_accumulation_steps: int) -> Transform:
    """Run `inner` on the mean gradient of every `gradient_accumulation_steps` calls.

    Jit-friendly (`jax.lax.cond`). Non-update calls return zero updates and leave the
    inner state as it was; `kopt.functional.iteration_count` reads real updates.
    """
    validate_accumulation(gradient_accumulation_steps)
    n = gradient_accumulation_steps

    def init_fn(params):
        return AccumulateState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                               jax.tree.map(jnp.zeros_like, params), inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        is_update = (state.micro_step + 1) % n == 0
        summed = jax.tree.map(lambda g, a: None if g is None else a + g.astype(a.dtype),
                              updates, state.accum, is_leaf=_is_none)
        mean = jax.tree.map(lambda s, g: None if g is None else (s / n).astype(g.dtype),
                            summed, updates, is_leaf=_is_none)

        def run():
            u, s = call_update(inner, mean, state.inner, params, extra_args)
            u = jax.tree.map(lambda x, g: None if x is None else x.astype(g.dtype),
                             u, updates, is_leaf=_is_none)
            return u, s

        out_u, _ = jax.eval_shape(run)

        def skip():
            return (jax.tree.map(lambda x: None if x is None else jnp.zeros(x.shape, x.dtype),
                                 out_u, is_leaf=_is_none), state.inner)

        new_updates, new_inner = jax.lax.cond(is_update, run, skip)
        new_accum = jax.tree.map(
            lambda s, a: a if s is None else jnp.where(is_update, jnp.zeros_like(s), s),
            summed, state.accum, is_leaf=_is_none)
        return new_updates, AccumulateState(
            state.count + is_update.astype(jnp.int32), state.micro_step + 1, new_accum,
            new_inner)

    return Transform(init_fn, update_fn)
