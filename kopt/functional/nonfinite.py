"""Guards against non-finite gradients: `skip_nonfinite` and `dynamic_loss_scale`.

Both wrap any transform, kopt's or optax's, and decide inside the compiled step (with
`jax.lax.cond`) whether the inner transform runs:

- `skip_nonfinite(inner)` (optax calls it `apply_if_finite`): when any gradient is NaN or
  Inf, return zero updates and keep the inner state as it was; count the skipped steps.
- `dynamic_loss_scale(inner, initial_scale, dynamic_growth_steps)`: Keras 3's dynamic
  loss scaling (`keras.optimizers.LossScaleOptimizer`). The gradients of a loss multiplied
  by `dynamic_scale` are divided by it before `inner` runs; a non-finite step is skipped
  and halves the scale, and every `dynamic_growth_steps` finite steps in a row double it.

The skipped branch returns the inner state unchanged, so the state's structure and dtypes
are the same whichever branch runs, and a step compiles once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform, _find_field, call_update
from kopt.functional.buckets import state_dtype_for
from kopt.functional.validation import check_int, check_number

__all__ = [
    "all_finite",
    "skip_nonfinite",
    "SkipNonfiniteState",
    "dynamic_loss_scale",
    "LossScaleState",
]


def _is_none(x):
    return x is None


def all_finite(tree) -> jax.Array:
    """A 0-d bool: True when every array leaf of `tree` is free of NaN and Inf.

    `None` leaves are ignored; integer leaves are always finite.
    """
    leaves = [g for g in jax.tree.leaves(tree) if g is not None]
    result = jnp.array(True)
    for g in leaves:
        result = jnp.logical_and(result, jnp.all(jnp.isfinite(g)))
    return result


def _zeros_like_output(update_fn, *args):
    """Zeros with the structure, shapes and dtypes of `update_fn(*args)[0]` (no FLOPs)."""
    out, _ = jax.eval_shape(update_fn, *args)
    return jax.tree.map(lambda x: None if x is None else jnp.zeros(x.shape, x.dtype),
                        out, is_leaf=_is_none)


def _has_count(state) -> bool:
    return _find_field(state, "count") is not None


class SkipNonfiniteState(NamedTuple):
    count: jax.Array         # shape=(), int32: updates applied (see `skip_nonfinite`)
    skipped: jax.Array       # shape=(), int32: non-finite steps skipped, in total
    consecutive: jax.Array   # shape=(), int32: non-finite steps in a row (0 after a finite one)
    inner: Any               # the inner transform's state


def skip_nonfinite(inner: Transform, max_consecutive: int | None = None) -> Transform:
    r"""Skip every step whose gradients hold a NaN or an Inf (optax's `apply_if_finite`).

    On a step where every gradient is finite, `inner.update` runs as usual. Otherwise
    the returned updates are zeros (shaped and typed like `inner`'s updates), the inner
    state is left exactly as it was and `skipped` (steps not applied, in total) is
    incremented; `consecutive` counts the non-finite steps in a row. The choice is made with `jax.lax.cond`, so the update
    jits, vmaps and scans, and the state's structure and dtypes never change.

    `count` is the number of updates applied: the inner state's own `count` where it has
    one (so an inner `gradient_accumulation_steps` counts real updates, as usual), else
    the number of finite steps. `kopt.functional.iteration_count(state)` reads it.

    Args:
      inner: the transform to guard (anything with `init` and `update`).
      max_consecutive: None (default) skips every non-finite step. With an int N >= 1,
        once more than N non-finite steps come in a row the step is applied anyway (as
        optax's `max_consecutive_errors`), so a run whose gradients stay non-finite fails
        visibly instead of silently never updating.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> from kopt.functional.nonfinite import skip_nonfinite
      >>> tx = skip_nonfinite(kopt.functional.adam(0.1))
      >>> params = {"w": jnp.ones((3,))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
      >>> int(state.skipped), float(jnp.abs(updates["w"]).sum())
      (1, 0.0)

    Reference: `optax.apply_if_finite`.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"skip_nonfinite: `inner` must be a transform with init/update. Received: {inner!r}")
    max_consecutive = check_int("max_consecutive", max_consecutive, low=1, allow_none=True,
                                message="`max_consecutive` must be None or an integer >= 1.")

    def init_fn(params):
        zero = jnp.zeros((), jnp.int32)
        return SkipNonfiniteState(count=zero, skipped=zero, consecutive=zero,
                                  inner=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        consecutive = jnp.where(finite, 0, state.consecutive + 1).astype(jnp.int32)
        apply = finite
        if max_consecutive is not None:
            apply = jnp.logical_or(finite, consecutive > max_consecutive)

        def inner_update(u, s, p):
            return call_update(inner, u, s, p, extra_args)

        def run():
            return inner_update(updates, state.inner, params)

        def skip():
            return _zeros_like_output(inner_update, updates, state.inner, params), state.inner

        new_updates, new_inner = jax.lax.cond(apply, run, skip)
        if _has_count(new_inner):
            count = jnp.asarray(_find_field(new_inner, "count").count, jnp.int32)
        else:
            count = state.count + apply.astype(jnp.int32)
        skipped = state.skipped + jnp.logical_not(apply).astype(jnp.int32)
        return new_updates, SkipNonfiniteState(count, skipped, consecutive, new_inner)

    return Transform(init_fn, update_fn)


class LossScaleState(NamedTuple):
    step_counter: jax.Array    # shape=(), int32: finite steps since the scale last changed
    dynamic_scale: jax.Array   # shape=(), float32: the current loss scale
    inner: Any                 # the inner transform's state

    @property
    def count(self) -> jax.Array:
        """The inner state's update count (skipped steps are not counted)."""
        found = _find_field(self.inner, "count")
        if found is None:
            raise ValueError("The inner transform's state has no `count` field.")
        return found.count


def _check_scale_arguments(initial_scale, dynamic_growth_steps):
    check_number("initial_scale", initial_scale, low=0, low_open=True,
                 message="`initial_scale` must be a finite number > 0.")
    check_int("dynamic_growth_steps", dynamic_growth_steps, low=1,
              message="`dynamic_growth_steps` must be an integer >= 1.")


def dynamic_loss_scale(inner: Transform, initial_scale: float = 2.0**15,
                       dynamic_growth_steps: int = 2000) -> Transform:
    r"""Keras 3's dynamic loss scaling around `inner` (`keras.optimizers.LossScaleOptimizer`).

    Differentiate `loss * state.dynamic_scale` (the scale keeps small float16 gradients
    from underflowing) and pass those scaled gradients to `update`. With scale :math:`s`
    and step counter :math:`k`:

    - if every gradient is finite: the inner transform runs on :math:`g / s` (divided in
      float32 or wider, in the gradient's dtype), then :math:`s \leftarrow 2s, k \leftarrow 0` when
      :math:`k = \text{dynamic\_growth\_steps} - 1`, else :math:`k \leftarrow k + 1`;
    - otherwise the step is skipped (zero updates, inner state unchanged) and
      :math:`s \leftarrow s / 2, k \leftarrow 0`.

    The updates have the gradients' dtypes. `state.count` (and `iteration_count`) is the
    inner transform's count, so skipped steps are not counted.

    Args:
      inner: the transform that applies the unscaled gradients.
      initial_scale: the starting scale, a finite number > 0. Default `2.0**15`.
      dynamic_growth_steps: finite steps in a row after which the scale doubles, an int
        >= 1. Default 2000.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> from kopt.functional.nonfinite import dynamic_loss_scale
      >>> tx = dynamic_loss_scale(kopt.functional.sgd(0.1), initial_scale=8.0)
      >>> params = jnp.ones((2,))
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p ** 2) * state.dynamic_scale)(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> updates.tolist()
      [-0.20000000298023224, -0.20000000298023224]

    Reference: `keras.optimizers.LossScaleOptimizer`; Micikevicius et al., "Mixed
    Precision Training" (2018).
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            "dynamic_loss_scale: `inner` must be a transform with init/update. "
            f"Received: {inner!r}")
    _check_scale_arguments(initial_scale, dynamic_growth_steps)

    def init_fn(params):
        return LossScaleState(step_counter=jnp.zeros((), jnp.int32),
                              dynamic_scale=jnp.asarray(initial_scale, jnp.float32),
                              inner=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        scale = state.dynamic_scale

        def unscale(g):   # divided in float32 (or wider), handed on in g's dtype
            wide = state_dtype_for(g.dtype)
            return (g.astype(wide) / scale.astype(wide)).astype(g.dtype)

        unscaled = jax.tree.map(lambda g: None if g is None else unscale(g),
                                updates, is_leaf=_is_none)

        def inner_update(grads, inner_state):
            new_updates, new_inner = call_update(inner, grads, inner_state, params, extra_args)
            # Back to the gradients' dtypes, so the output is typed like the input.
            new_updates = jax.tree.map(
                lambda u, g: None if u is None else u.astype(g.dtype),
                new_updates, updates, is_leaf=_is_none)
            return new_updates, new_inner

        def run():
            return inner_update(unscaled, state.inner)

        def skip():
            return _zeros_like_output(inner_update, unscaled, state.inner), state.inner

        new_updates, new_inner = jax.lax.cond(finite, run, skip)
        grow = jnp.logical_and(finite, state.step_counter == dynamic_growth_steps - 1)
        step_counter = jnp.where(finite & ~grow, state.step_counter + 1, 0).astype(jnp.int32)
        factor = jnp.where(grow, 2.0, jnp.where(finite, 1.0, 0.5)).astype(jnp.float32)
        return new_updates, LossScaleState(step_counter, scale * factor, new_inner)

    return Transform(init_fn, update_fn)
