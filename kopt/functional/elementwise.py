"""The engine behind every elementwise optimizer (SGD, RMSprop, Adam, ...).

An optimizer file supplies a `Rule`: the names of its per-parameter state slots and a
`step` that maps one gradient array (any shape) and the matching slot arrays to the
increment and the new slots. `elementwise_transform` turns that into a `Transform` with
Keras 3's order of operations:

1. clip the gradients (`clipnorm` per tensor, or `global_clipnorm`, or `clipvalue`);
2. run the rule once per bucket of small leaves and once per large leaf
   (see `kopt.functional.buckets`);
3. add decoupled weight decay, `-param * weight_decay * lr`, where the mask allows;
4. count the step.

The learning rate at step `count` is the stored float, or `schedule(count)`.
A `None` gradient leaf is skipped: no update, and its state is unchanged.

Two optional parts of a `Rule` cover the rules that are not purely per-parameter:

- `scalars`: 0-d float32 state fields shared by all params (Nadam's `momentum_cache`).
  `advance` updates them once per update, before the per-parameter steps, as Keras's
  `_backend_update_step` does; `step` then reads the new values from its `slots` dict.
- `needs_params`: `step` also receives the param (Ftrl assigns the variable from its
  state). It sees the param after weight decay, as Keras's `update_step` sees the
  variable after `_apply_weight_decay`, and returns `new_param - param` as its delta.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.base import Transform
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD, Packed, plan
from kopt.functional.clipping import clip_leaves, validate_clip_options
from kopt.functional.learning_rate import as_learning_rate
from kopt.functional.weight_decay import resolve_mask, validate_weight_decay

__all__ = ["Rule", "elementwise_transform"]


class Rule(NamedTuple):
    """An elementwise update rule.

    `step(g, slots, lr, t) -> (delta, new_slots)`: `g` is a gradient array, `slots` a dict
    from slot name to an array shaped like `g`, `lr` the learning rate and `t` the 1-based
    step number, both scalars of `g`'s dtype. `delta` is added to the param. `new_slots`
    holds the new value of every name in `slots`.

    With `scalars`, `slots` also holds each scalar (the value after `advance`, cast to
    `g`'s dtype); `new_slots` does not return them. `advance(scalars, t) -> new_scalars`
    maps the dict of float32 scalars and the int32 step number to their next values.

    With `needs_params`, the call is `step(g, slots, lr, t, param)`: `param` has the
    layout of `g` (flat for a bucket) and has had weight decay applied.
    """

    slots: tuple[str, ...]
    step: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    fill: dict[str, float] = {}   # initial value per slot; 0 when absent
    scalars: dict[str, float] = {}   # scalar state field -> initial value (float32)
    advance: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None
    needs_params: bool = False


def _check_threshold(bucket_threshold):
    if bucket_threshold is None:
        return
    if isinstance(bucket_threshold, bool) or not isinstance(bucket_threshold, int) or bucket_threshold < 0:
        raise ValueError(
            "`bucket_threshold` must be an int >= 0 (0 turns bucketing off). "
            f"Received: bucket_threshold={bucket_threshold!r}"
        )


def elementwise_transform(
    rule: Rule,
    state_cls: type,
    learning_rate: Any,
    *,
    weight_decay: float | None = None,
    weight_decay_mask: Any = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    bucket_threshold: int | None = DEFAULT_BUCKET_THRESHOLD,
) -> Transform:
    """Build a `Transform` from `rule`; `state_cls` is a NamedTuple with fields
    `count`, `learning_rate` and (at least) one per slot."""
    lr = as_learning_rate(learning_rate)
    validate_clip_options(clipnorm, clipvalue, global_clipnorm)
    validate_weight_decay(weight_decay)
    _check_threshold(bucket_threshold)

    if rule.scalars and rule.advance is None:
        raise ValueError("A Rule with `scalars` needs an `advance` function.")

    def init_fn(params):
        slots = {}
        if rule.slots:
            layout = plan(params, bucket_threshold)
            for name in rule.slots:
                slots[name] = Packed.full(layout, rule.fill.get(name, 0.0), like=params)
        scalars = {name: jnp.asarray(v, jnp.float32) for name, v in rule.scalars.items()}
        return state_cls(
            count=jnp.zeros((), jnp.int32), learning_rate=lr.initial(), **scalars, **slots
        )

    def update_fn(updates, state, params=None):
        if weight_decay and params is None:
            raise ValueError(
                "This optimizer applies weight decay, so update() needs `params`: "
                "call update(grads, state, params)."
            )
        if rule.needs_params and params is None:
            raise ValueError(
                "This optimizer's rule reads the parameters, so update() needs `params`: "
                "call update(grads, state, params)."
            )
        if rule.slots:
            layout = getattr(state, rule.slots[0]).layout
            treedef = layout.treedef
        else:
            layout = None
            treedef = jax.tree.structure(params if params is not None else updates)
        try:
            g_all = treedef.flatten_up_to(updates)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"The gradient tree does not match the optimizer state's tree. "
                f"Expected structure {treedef}, received {jax.tree.structure(updates)}."
            ) from e
        present = [i for i, g in enumerate(g_all) if g is not None]
        clipped = clip_leaves([g_all[i] for i in present], clipnorm, clipvalue, global_clipnorm)
        grads: list[Any] = [None] * len(g_all)
        for i, g in zip(present, clipped):
            grads[i] = g

        rate = lr.value(state)
        t = state.count + 1
        deltas: list[Any] = [None] * len(g_all)
        new_slots = {}

        scalars = {}
        if rule.scalars:
            old_scalars = {name: getattr(state, name) for name in rule.scalars}
            scalars = {
                name: jnp.asarray(x, jnp.float32)
                for name, x in rule.advance(old_scalars, t).items()
            }

        # The params as the rule sees them: after decoupled weight decay (Keras's order).
        p_leaves = treedef.flatten_up_to(params) if (weight_decay or rule.needs_params) else None
        use_decay = resolve_mask(weight_decay_mask, params, treedef) if weight_decay else None
        seen: list[Any] = [None] * len(g_all)
        if rule.needs_params:
            for i in present:
                p = jnp.asarray(p_leaves[i])
                if weight_decay and use_decay[i]:
                    p = p - p * (weight_decay * rate.astype(p.dtype))
                seen[i] = p

        def run_step(g, slots, dtype, param=None):
            slots = {**slots, **{n: x.astype(dtype) for n, x in scalars.items()}}
            args = (g, slots, rate.astype(dtype), t.astype(dtype))
            if rule.needs_params:
                args += (param,)
            return rule.step(*args)

        if layout is None:
            for i in present:
                g = grads[i]
                param = seen[i].astype(g.dtype) if rule.needs_params else None
                d, _ = run_step(g, {}, g.dtype, param)
                deltas[i] = d
        else:
            old = {name: getattr(state, name) for name in rule.slots}
            new_buckets = {name: list(old[name].buckets) for name in rule.slots}
            new_large = {name: list(old[name].leaves) for name in rule.slots}
            for b, (dtype, size) in enumerate(layout.buckets):
                members = layout.members(b)
                live = [i for i in members if grads[i] is not None]
                if not live:
                    continue
                parts = [
                    jnp.ravel(grads[i]).astype(dtype) if grads[i] is not None
                    else jnp.zeros((layout.place[i][2],), dtype)
                    for i in members
                ]
                g_flat = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
                p_flat = None
                if rule.needs_params:
                    p_parts = [
                        jnp.ravel(seen[i]).astype(dtype) if grads[i] is not None
                        else jnp.zeros((layout.place[i][2],), dtype)
                        for i in members
                    ]
                    p_flat = jnp.concatenate(p_parts) if len(p_parts) > 1 else p_parts[0]
                d_flat, s_flat = run_step(
                    g_flat, {n: old[n].buckets[b] for n in rule.slots}, dtype, p_flat
                )
                # Materialise the bucket's results once. Without the barrier XLA fuses the
                # whole concatenate-and-update into every per-leaf slice below, which is
                # quadratic in the number of leaves at compile time and at run time.
                d_flat, s_flat = jax.lax.optimization_barrier((d_flat, s_flat))
                if len(live) < len(members):   # keep the state of skipped leaves
                    keep = np.zeros((size,), bool)
                    for i in live:
                        _, off, n = layout.place[i]
                        keep[off:off + n] = True
                    s_flat = {n: jnp.where(keep, s_flat[n], old[n].buckets[b]) for n in s_flat}
                for n in rule.slots:
                    new_buckets[n][b] = s_flat[n]
                for i in live:
                    _, off, n = layout.place[i]
                    deltas[i] = d_flat[off:off + n].reshape(layout.shapes[i])
            for i in layout.large():
                if grads[i] is None:
                    continue
                dtype = layout.dtypes[i]
                param = seen[i].astype(dtype) if rule.needs_params else None
                d, s = run_step(
                    grads[i].astype(dtype), {n: old[n].leaves[i] for n in rule.slots}, dtype, param
                )
                deltas[i] = d
                for n in rule.slots:
                    new_large[n][i] = s[n]
            new_slots = {
                n: Packed(new_buckets[n], new_large[n], layout) for n in rule.slots
            }

        if weight_decay:
            for i in present:
                if use_decay[i]:
                    p = p_leaves[i]
                    dt = deltas[i].dtype
                    deltas[i] = deltas[i] - p.astype(dt) * (weight_decay * rate.astype(dt))
        for i in present:
            deltas[i] = deltas[i].astype(g_all[i].dtype)

        new_state = state._replace(
            count=t, learning_rate=lr.next(state, t), **scalars, **new_slots
        )
        return treedef.unflatten(deltas), new_state

    return Transform(init_fn, update_fn)
