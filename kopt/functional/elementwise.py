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

Keras's cross-cutting options wrap that core, in Keras 3's order:

- `loss_scale_factor`: the gradients are divided by it first;
- `gradient_accumulation_steps=N`: the gradients are added to the `accum` slot; on every
  N-th call (`micro_step`, the raw call count) the core runs on the mean `accum / N`
  (under `jax.lax.cond`) and `accum` is reset; other calls return zero updates and leave
  the core state unchanged. `count` counts real updates (Keras's `iterations`); schedules
  read `micro_step` (Keras's `_iterations`);
- `use_ema`: after the step, on every call, `ema = m * ema + (1 - m) * new_param` with
  `m = 0` while `count == 0` and `ema_momentum` after; with `ema_overwrite_frequency=F`,
  when `(count + 1) % F == 0` (count before this call) the update moves the param onto
  the new EMA.

These live in the optional state fields `ema`, `accum` (Packed, like the slots) and
`micro_step` (int32 scalar), None when the option is off.

The learning rate at step `count` is the stored float, or `schedule(count)`.
A `None` gradient leaf is skipped: no update, and its state is unchanged.

Two optional parts of a `Rule` cover the rules that are not purely per-parameter:

- `scalars`: 0-d float32 state fields shared by all params (Nadam's `momentum_cache`).
  `advance` updates them once per update, before the per-parameter steps, as Keras's
  `_backend_update_step` does; `step` then reads the new values from its `slots` dict.
- `needs_params`: `step` also receives the param (Ftrl assigns the variable from its
  state). It sees the param after weight decay, as Keras's `update_step` sees the
  variable after `_apply_weight_decay`, and returns `new_param - param` as its delta.

Rules that need a whole tensor at a time (norms, factored moments, orthogonalisation:
Adafactor, Lamb, LARS, Muon) set `per_leaf=True`: nothing is bucketed, so `step` always
sees one param's gradient with its true shape. Such a rule may give `init`, which makes
each slot's initial array from the param (any shape: Adafactor's factored rows), and
`leaf_info=True`, which passes `leaf=i, layout=layout` to `step` so that a rule can treat
leaves differently by index, shape or tree path (Muon's AdamW branch).

Low-precision state (`state_dtype`, see `kopt.functional.quantize`). The rule computes
in the state's dtype, and in float32 where the state is stored in bfloat16 or int8.

- None (default): each slot takes the param's dtype, with a float32 minimum;
  'float32': float32 for every leaf.
- 'bfloat16': slots are stored in bfloat16 and written back with stochastic rounding;
  where the rule gives `update`, the increment is computed from the stored new state
  (see `Rule`).
- 'int8': each leaf of at least `min_quantized_size` elements keeps its slots block-wise
  quantised (`Quantized`: 8-bit codes and one float32 scale per 2048 elements; the slots
  a `Rule` lists as `nonnegative` use the unsigned map, the others the signed one),
  stochastically rounded too, and is never bucketed; smaller leaves keep full-precision
  slots, bucketed as usual. Only elementwise rules (not `per_leaf`) support it.

Both round with random bits that hash (element, step, `seed`, slot), `seed` being a
uint32 state field (0 at `init`; replace it for another stream), so a run is
reproducible and resumes exactly from a checkpoint. Unbiased rounding matters: with
round-to-nearest, increments smaller than half a step of the stored format, such as
Adam's `(1 - beta_2) (g^2 - v)`, are lost every step and `v` stalls well below its
float32 value.

The cross-cutting state (`ema`, `accum`) always keeps full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.base import Transform, apply_updates, wider_dtype
from kopt.functional.buckets import (
    DEFAULT_BUCKET_THRESHOLD,
    OWN,
    Packed,
    Stub,
    plan,
    state_dtype_for,
)
from kopt.functional.clipping import clip_leaves, validate_clip_options
from kopt.functional.learning_rate import as_learning_rate
from kopt.functional.quantize import (
    MIN_QUANTIZED_SIZE,
    blockwise_step,
    rounding_key,
    stochastic_round,
    validate_state_dtype,
)
from kopt.functional.validation import (
    check_int,
    is_traced,
    maybe_nonzero,
    validate_accumulation,
    validate_ema,
    validate_loss_scale_factor,
)
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

    `advance(scalars, t, lr)` also receives the learning rate of this update (float32).

    With `per_leaf`, no leaf is bucketed. `init(name, param, i) -> array` then makes the
    initial array of slot `name` for param leaf `i` (its shape is the rule's choice);
    without it each slot is `fill`, shaped like the param. With `leaf_info`, `step` also
    receives the keywords `leaf` (the flat leaf index) and `layout` (the `Layout` of the
    first slot: its `treedef` is the params', its `shapes` the first slot's entries'). An
    `init` array of zero size is kept as an empty `Stub` (orbax saves no empty array):
    `step` sees it as zeros of that shape, and its new value is dropped.

    `nonnegative` names the slots that never go below zero (second moments,
    accumulators); int8 state stores them with the unsigned map, which has twice the
    resolution. Other slots use the signed map.

    `update(g, new_slots, lr, t) -> delta` (same arguments as `step`, but the slots hold
    their new values) is the increment computed from the new slots, where the rule can
    say it. With bfloat16 state the engine then computes the increment from the stored,
    rounded new state instead of from the old state: XLA updates the state in place and
    keeps no copy of the old one, and the step reads the state once instead of twice
    (a bfloat16 Adam step then runs as fast as a float32 one on CPU). Without it the
    increment comes from `step`, exactly, at the price of a copy of the old state (2 bytes
    per slot element). (With int8 state the increment always comes from `step`: XLA
    would recompute the new codes rather than read them back.)
    """

    slots: tuple[str, ...]
    step: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    fill: dict[str, float] = {}   # initial value per slot; 0 when absent
    scalars: dict[str, float] = {}   # scalar state field -> initial value (float32)
    advance: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None
    needs_params: bool = False
    per_leaf: bool = False
    init: Callable[[str, jax.Array, int], jax.Array] | None = None
    leaf_info: bool = False
    nonnegative: tuple[str, ...] = ()   # slots >= 0: the unsigned map under int8 state
    update: Callable[..., jax.Array] | None = None   # delta from the new slots


def _check_threshold(bucket_threshold):
    return check_int("bucket_threshold", bucket_threshold, low=0, allow_none=True,
                     message="`bucket_threshold` must be an int >= 0 (0 turns bucketing off).")


def _static_layout_args(**args):
    """`bucket_threshold` and `min_quantized_size` decide the state's layout at `init`;
    a traced value (inject_hyperparams under jit) cannot."""
    for name, value in args.items():
        if is_traced(value):
            raise ValueError(
                f"`{name}` decides the layout of the optimizer state, so it must be a "
                "concrete integer at init; with optax.inject_hyperparams, list it in "
                f"`static_args`. Received: {name}={value!r}"
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
    use_ema: bool = False,
    ema_momentum: float = 0.99,
    ema_overwrite_frequency: int | None = None,
    loss_scale_factor: float | None = None,
    gradient_accumulation_steps: int | None = None,
    state_dtype: str | None = None,
    min_quantized_size: int = MIN_QUANTIZED_SIZE,
) -> Transform:
    """Build a `Transform` from `rule`; `state_cls` is a NamedTuple with fields
    `count`, `learning_rate`, (at least) one per slot, and `ema`, `accum` and
    `micro_step` (defaulting to None) for the cross-cutting options, and `seed`
    (defaulting to None) for `state_dtype='bfloat16'`.

    `state_dtype` (None, 'float32', 'bfloat16' or 'int8') and `min_quantized_size` (the
    smallest leaf, in elements, whose state 'int8' quantises; default 2048) choose how
    the slots are stored: see the module docstring."""
    lr = as_learning_rate(learning_rate)
    validate_clip_options(clipnorm, clipvalue, global_clipnorm)
    validate_weight_decay(weight_decay)
    bucket_threshold = _check_threshold(bucket_threshold)
    validate_loss_scale_factor(loss_scale_factor)
    validate_ema(use_ema, ema_momentum, ema_overwrite_frequency)
    validate_accumulation(gradient_accumulation_steps)
    min_quantized_size = check_int("min_quantized_size", min_quantized_size, low=1,
                                   message="`min_quantized_size` must be an int >= 1.")
    # Array hyperparameters (optax.inject_hyperparams) may be traced: decide from them
    # in Python only where they can be read (`maybe_nonzero` is True for a traced value).
    if gradient_accumulation_steps is not None and not is_traced(gradient_accumulation_steps):
        gradient_accumulation_steps = int(gradient_accumulation_steps)
    accum_steps = gradient_accumulation_steps if maybe_nonzero(
        gradient_accumulation_steps) else None
    decays = maybe_nonzero(weight_decay)
    overwrites = maybe_nonzero(ema_overwrite_frequency)
    need_aux = bool(use_ema or accum_steps)
    if need_aux:
        missing = [f for f in ("ema", "accum", "micro_step") if f not in state_cls._fields]
        if missing:
            raise TypeError(f"{state_cls.__name__} lacks the field(s) {missing} that the "
                            "cross-cutting options need.")

    if rule.scalars and rule.advance is None:
        raise ValueError("A Rule with `scalars` needs an `advance` function.")
    state_dtype = validate_state_dtype(
        state_dtype, MIN_QUANTIZED_SIZE if is_traced(min_quantized_size) else min_quantized_size)
    if state_dtype == "int8" and rule.slots and (rule.per_leaf or rule.init is not None):
        raise ValueError(
            "state_dtype='int8' needs an elementwise rule; this optimizer's rule works on "
            "whole tensors, so its state cannot be quantised block-wise. Use "
            "state_dtype='bfloat16' or None. Received: state_dtype='int8'"
        )
    rounding = state_dtype in ("bfloat16", "int8") and bool(rule.slots)
    if rounding and "seed" not in state_cls._fields:
        raise TypeError(f"{state_cls.__name__} lacks the field 'seed' (the stochastic-rounding "
                        f"seed) that state_dtype={state_dtype!r} needs.")

    def init_fn(params):
        slots = {}
        _static_layout_args(bucket_threshold=bucket_threshold,
                            **({"min_quantized_size": min_quantized_size}
                               if state_dtype == "int8" else {}))
        if rule.slots or need_aux:
            threshold = 0 if rule.per_leaf else bucket_threshold
            layout = plan(params, threshold)   # the cross-cutting state's
            slot_layout = layout if state_dtype is None else plan(
                params, threshold, state_dtype, min_quantized_size)
        if rule.slots and rule.init is not None:
            p_leaves = slot_layout.treedef.flatten_up_to(params)
            for name in rule.slots:
                arrays = [jnp.asarray(rule.init(name, jnp.asarray(p), i))
                          for i, p in enumerate(p_leaves)]
                if state_dtype is not None:
                    arrays = [a.astype(slot_layout.dtypes[i]) for i, a in enumerate(arrays)]
                # A zero-size entry (Muon's empty `v`) is a Stub: orbax cannot save it.
                entries = [Stub(tuple(a.shape), a.dtype.name, False) if a.size == 0 else a
                           for a in arrays]
                slots[name] = Packed(None, slot_layout.treedef.unflatten(entries))
        elif rule.slots:
            for name in rule.slots:
                slots[name] = Packed.full(slot_layout, rule.fill.get(name, 0.0), like=params,
                                          signed=name not in rule.nonnegative)
        scalars = {name: jnp.asarray(v, jnp.float32) for name, v in rule.scalars.items()}
        if rounding:
            scalars["seed"] = jnp.zeros((), jnp.uint32)
        if use_ema:   # zeros, as Keras; the first update sets it to the params
            slots["ema"] = Packed.full(layout, 0.0, like=params)
        if accum_steps:
            slots["accum"] = Packed.full(layout, 0.0, like=params)
            scalars["micro_step"] = jnp.zeros((), jnp.int32)
        return lr.mark(state_cls(
            count=jnp.zeros((), jnp.int32), learning_rate=lr.initial(), **scalars, **slots
        ))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args   # accepted and ignored, as optax's GradientTransformationExtraArgs
        if decays and params is None:
            raise ValueError(
                "This optimizer applies weight decay, so update() needs `params`: "
                "call update(grads, state, params)."
            )
        if rule.needs_params and params is None:
            raise ValueError(
                "This optimizer's rule reads the parameters, so update() needs `params`: "
                "call update(grads, state, params)."
            )
        if use_ema and params is None:
            raise ValueError(
                "This optimizer keeps an EMA of the parameters (use_ema=True), so update() "
                "needs `params`: call update(grads, state, params)."
            )
        if rule.slots:
            layout = getattr(state, rule.slots[0]).layout
            treedef = layout.treedef
        elif need_aux:
            layout = None
            treedef = (state.ema if use_ema else state.accum).layout.treedef
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
        if loss_scale_factor is not None:   # unscale first, as Keras's `apply`
            g_all = [g if g is None else g / loss_scale_factor for g in g_all]
        # Schedules read the raw number of calls (Keras's `_iterations`), which differs
        # from the update count only under gradient accumulation.
        raw_step = state.micro_step if accum_steps else state.count
        rate = lr.value(state, raw_step)

        if accum_steps:
            aux_layout = state.accum.layout
            acc = state.accum.to_leaves()
            is_update = (state.micro_step + 1) % accum_steps == 0
            g_eff = list(g_all)
            new_acc = list(acc)
            for i in present:
                summed = g_all[i].astype(acc[i].dtype) + acc[i]
                g_eff[i] = (summed / accum_steps).astype(g_all[i].dtype)
                new_acc[i] = jnp.where(is_update, jnp.zeros_like(summed), summed)

            def skip():
                zeros = [None if g is None else jnp.zeros_like(g) for g in g_all]
                return zeros, _core_fields(state)

            deltas, core = jax.lax.cond(
                is_update, lambda: core_step(g_eff, state, params, rate), skip)
            count = state.count + is_update.astype(state.count.dtype)
            extra = {"accum": Packed.from_leaves(aux_layout, new_acc),
                     "micro_step": state.micro_step + 1}
        else:
            deltas, core = core_step(g_all, state, params, rate)
            count = state.count + 1
            extra = {}

        if use_ema:
            deltas, extra["ema"] = ema_step(deltas, state, params, treedef)

        new_state = state._replace(
            count=count, learning_rate=lr.next(state, raw_step + 1), **core, **extra
        )
        return treedef.unflatten(deltas), new_state

    def _core_fields(state):
        fields = {name: getattr(state, name) for name in rule.slots}
        fields.update({name: getattr(state, name) for name in rule.scalars})
        return fields

    def ema_step(deltas, state, params, treedef):
        """Keras's `_update_model_variables_moving_average` and the EMA overwrite."""
        layout = state.ema.layout
        p_leaves = treedef.flatten_up_to(params)
        old_ema = state.ema.to_leaves()
        new_p = [
            p if d is None else apply_updates(p, d)
            for p, d in zip(p_leaves, deltas)
        ]
        # Keras reads `iterations` (real updates before this call): momentum 0 at first.
        first = state.count == 0
        new_ema = []
        for e, p in zip(old_ema, new_p):
            m = jnp.where(first, 0.0, ema_momentum).astype(e.dtype)
            new_ema.append(m * e + (1 - m) * jnp.asarray(p).astype(e.dtype))
        deltas = list(deltas)
        if overwrites:
            overwrite = (state.count + 1) % ema_overwrite_frequency == 0
            for i, (p, e) in enumerate(zip(p_leaves, new_ema)):
                p = jnp.asarray(p)
                d = deltas[i]
                dt = p.dtype if d is None else d.dtype
                wide = wider_dtype(p.dtype, e.dtype)
                to_ema = (e.astype(wide) - p.astype(wide)).astype(dt)
                deltas[i] = jnp.where(overwrite, to_ema,
                                      jnp.zeros_like(to_ema) if d is None else d)
        return deltas, Packed.from_leaves(layout, new_ema)

    def core_step(g_all, state, params, rate):
        """Clip, run the rule, decay: `(deltas, new rule slots and scalars)`."""
        if rule.slots:
            layout = getattr(state, rule.slots[0]).layout
            treedef = layout.treedef
        else:
            layout = None
            treedef = (state.ema.layout.treedef if use_ema else state.accum.layout.treedef
                       ) if need_aux else jax.tree.structure(
                           params if params is not None else g_all)
        present = [i for i, g in enumerate(g_all) if g is not None]
        clipped = clip_leaves([g_all[i] for i in present], clipnorm, clipvalue, global_clipnorm)
        grads: list[Any] = [None] * len(g_all)
        for i, g in zip(present, clipped):
            grads[i] = g

        t = state.count + 1
        deltas: list[Any] = [None] * len(g_all)
        new_slots = {}

        scalars = {}
        if rule.scalars:
            old_scalars = {name: getattr(state, name) for name in rule.scalars}
            scalars = {
                name: jnp.asarray(x, jnp.float32)
                for name, x in rule.advance(old_scalars, t, rate.astype(jnp.float32)).items()
            }

        # The params as the rule sees them: after decoupled weight decay (Keras's order).
        p_leaves = treedef.flatten_up_to(params) if (decays or rule.needs_params) else None
        use_decay = resolve_mask(weight_decay_mask, params, treedef) if decays else None
        seen: list[Any] = [None] * len(g_all)
        if rule.needs_params:
            for i in present:
                p = jnp.asarray(p_leaves[i])
                if decays and use_decay[i]:
                    p = p - p * (weight_decay * rate.astype(p.dtype))
                seen[i] = p

        def run_step(g, slots, dtype, param=None, leaf=None):
            slots = {**slots, **{n: x.astype(dtype) for n, x in scalars.items()}}
            args = (g, slots, rate.astype(dtype), t.astype(dtype))
            if rule.needs_params:
                args += (param,)
            if rule.leaf_info:
                return rule.step(*args, leaf=leaf, layout=layout)
            return rule.step(*args)

        def run_update(g, new_slots, dtype, param=None, leaf=None):
            """`rule.update`: the increment from the (stored) new slots."""
            new_slots = {**new_slots, **{n: x.astype(dtype) for n, x in scalars.items()}}
            args = (g, new_slots, rate.astype(dtype), t.astype(dtype))
            if rule.needs_params:
                args += (param,)
            if rule.leaf_info:
                return rule.update(*args, leaf=leaf, layout=layout)
            return rule.update(*args)

        # With bfloat16 state, the increment comes from the stored state (`Rule.update`).
        from_stored = state_dtype == "bfloat16" and rule.update is not None

        if layout is None:
            for i in present:
                g = grads[i]
                param = seen[i].astype(g.dtype) if rule.needs_params else None
                d, _ = run_step(g, {}, g.dtype, param, leaf=i)
                deltas[i] = d
        else:
            old = {name: getattr(state, name) for name in rule.slots}
            new_buckets = {name: list(old[name].buckets) for name in rule.slots}
            new_large = {name: list(old[name].leaves) for name in rule.slots}
            own = {name: [k == OWN for k, _, _ in old[name].layout.place] for name in rule.slots}
            n_parts = layout.num_leaves + len(layout.buckets)

            def keys(part):
                """The stochastic-rounding key of each slot of leaf or bucket `part`."""
                return {n: rounding_key(state.seed, t, k * n_parts + part)
                        for k, n in enumerate(rule.slots)}

            def store(new, part):
                """New slot values (computed wide) in their storage dtype: bfloat16 by
                stochastic rounding; other dtypes are cast at the end."""
                if state_dtype != "bfloat16":
                    return new
                return {n: stochastic_round(new[n], key) for n, key in keys(part).items()}

            for b, (dtype, size) in enumerate(layout.buckets):
                members = layout.members(b)
                live = [i for i in members if grads[i] is not None]
                if not live:
                    continue
                dtype = state_dtype_for(dtype)   # compute dtype: float32 for bfloat16 state
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
                    g_flat, {n: old[n].buckets[b].astype(dtype) for n in rule.slots}, dtype, p_flat
                )
                s_flat = store(s_flat, layout.num_leaves + b)
                if from_stored:
                    s_flat = jax.lax.optimization_barrier(s_flat)
                    d_flat = run_update(g_flat, {n: x.astype(dtype) for n, x in s_flat.items()},
                                        dtype, p_flat)
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
            for i in layout.unbucketed():   # own arrays, and empty (zero-size) entries
                if grads[i] is None:
                    continue
                dtype = state_dtype_for(layout.dtypes[i])   # compute dtype
                param = seen[i].astype(dtype) if rule.needs_params else None
                if layout.dtypes[i] == "int8":
                    d, s = blockwise_step(
                        lambda g, s, p, i=i: run_step(g, s, jnp.float32, p, leaf=i),
                        grads[i], {n: old[n].leaves[i] for n in rule.slots}, param, keys(i),
                    )
                else:
                    g = grads[i].astype(dtype)
                    d, s = run_step(
                        g, {n: (old[n].leaves[i] if own[n][i] else old[n].leaf(i)).astype(dtype)
                            for n in rule.slots}, dtype, param, leaf=i,
                    )
                    s = store(s, i)
                    if from_stored:
                        s = jax.lax.optimization_barrier(s)
                        d = run_update(g, {n: x.astype(dtype) for n, x in s.items()}, dtype,
                                       param, leaf=i)
                deltas[i] = d
                for n in rule.slots:
                    new_large[n][i] = s[n]
            new_slots = {   # empty entries stay Stubs, whatever the rule returned for them
                n: Packed.from_parts(old[n].layout, new_buckets[n],
                                     [x if own[n][i] else None for i, x in enumerate(new_large[n])])
                for n in rule.slots
            }

        if decays:
            for i in present:
                if use_decay[i]:
                    p = p_leaves[i]
                    dt = deltas[i].dtype
                    deltas[i] = deltas[i] - p.astype(dt) * (weight_decay * rate.astype(dt))
        for i in present:
            deltas[i] = deltas[i].astype(g_all[i].dtype)

        core = _core_fields(state)
        for name, x in scalars.items():
            core[name] = x.astype(core[name].dtype)
        for name, x in new_slots.items():   # keep the state's dtypes (lax.cond needs them)
            core[name] = jax.tree.map(lambda a, b: a.astype(b.dtype), x, core[name])
        return deltas, core

    return Transform(init_fn, update_fn)
