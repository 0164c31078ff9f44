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
`micro_step` (int32 scalar), None when the option is off. The options are declared once,
in `kopt.functional.options.Options`. The engine is two parts: the rule runner
(`kopt.functional.rule_runner`: buckets, per-leaf rules, low-precision state, weight
decay) and, here, a wrapper that runs the public `unscale_gradients`,
`accumulate_gradients` (around `clip_by_*` and the runner) and `ema` transforms on views
of this state, so that each option is implemented once.

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
  slots, bucketed as usual. Only elementwise rules (not `per_leaf`) support it. A slot
  whose `Rule.state_dtypes` leaves out 'int8' stays float32 (Adan's `prev_grad`).

Both round with random bits that hash (element, step, `seed`, slot), `seed` being a
uint32 state field (0 at `init`; replace it for another stream), so a run is
reproducible and resumes exactly from a checkpoint. Unbiased rounding matters: with
round-to-nearest, increments smaller than half a step of the stored format, such as
Adam's `(1 - beta_2) (g^2 - v)`, are lost every step and `v` stalls well below its
float32 value.

The cross-cutting state (`ema`, `accum`) always keeps full precision.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from kopt.functional.base import Transform
from kopt.functional.buckets import Packed, plan
from kopt.functional.clipping import (
    EmptyState,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
)
from kopt.functional.cross_cutting import (
    AccumulateState,
    EmaState,
    accumulate_gradients,
    ema,
    unscale_gradients,
)
from kopt.functional.learning_rate import as_learning_rate
from kopt.functional.options import Options
from kopt.functional.rule_runner import RunnerState, init_slots, run_rule
from kopt.functional.sharding import state_shardings
from kopt.functional.validation import is_traced, maybe_nonzero
from kopt.functional.weight_decay import resolve_mask

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

    `state_dtypes` declares, per slot, the low-precision dtypes it can be stored in
    (Adan's `prev_grad` is a gradient whose difference with the next one is the signal:
    8-bit codes would swamp it, so it lists only 'bfloat16' and stays float32 under
    'int8').
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
    # Capabilities: the low-precision `state_dtype`s ('bfloat16', 'int8') each slot
    # supports; a slot not listed supports both. Under 'int8' an unsupported slot stays
    # in full precision (float32); an unsupported 'bfloat16' is refused (ValueError).
    state_dtypes: dict[str, tuple[str, ...]] = {}

    def supports(self, slot: str, state_dtype: str | None) -> bool:
        """Whether `slot` may be stored in `state_dtype` (None and 'float32': always)."""
        if state_dtype in (None, "float32"):
            return True
        return state_dtype in self.state_dtypes.get(slot, ("bfloat16", "int8"))


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


def _check_rule(rule: Rule, state_cls: type, options: Options, need_aux: bool):
    """Refuse a rule, state class and options that do not fit; return whether the state
    is stochastically rounded (and so needs a seed)."""
    if need_aux:
        missing = [f for f in ("ema", "accum", "micro_step") if f not in state_cls._fields]
        if missing:
            raise TypeError(f"{state_cls.__name__} lacks the field(s) {missing} that the "
                            "cross-cutting options need.")
    if rule.scalars and rule.advance is None:
        raise ValueError("A Rule with `scalars` needs an `advance` function.")
    state_dtype = options.state_dtype
    if state_dtype == "int8" and rule.slots and (rule.per_leaf or rule.init is not None):
        raise ValueError(
            "state_dtype='int8' needs an elementwise rule; this optimizer's rule works on "
            "whole tensors, so its state cannot be quantised block-wise. Use "
            "state_dtype='bfloat16' or None. Received: state_dtype='int8'"
        )
    refused = [n for n in rule.slots if state_dtype == "bfloat16"
               and not rule.supports(n, state_dtype)]
    if refused:
        raise ValueError(
            f"This optimizer's slot(s) {refused} cannot be stored in bfloat16. Use "
            f"state_dtype=None or 'float32'. Received: state_dtype={state_dtype!r}")
    rounding = state_dtype in ("bfloat16", "int8") and bool(rule.slots)
    if rounding and "seed" not in state_cls._fields:
        raise TypeError(f"{state_cls.__name__} lacks the field 'seed' (the stochastic-rounding "
                        f"seed) that state_dtype={state_dtype!r} needs.")
    return rounding


def _check_params(rule: Rule, options: Options, params) -> None:
    if params is not None:
        return
    if maybe_nonzero(options.weight_decay):
        raise ValueError("This optimizer applies weight decay, so update() needs `params`: "
                         "call update(grads, state, params).")
    if rule.needs_params:
        raise ValueError("This optimizer's rule reads the parameters, so update() needs "
                         "`params`: call update(grads, state, params).")
    if options.use_ema:
        raise ValueError("This optimizer keeps an EMA of the parameters (use_ema=True), so "
                         "update() needs `params`: call update(grads, state, params).")


def _clip(options: Options) -> Transform | None:
    """The public clipping transform the options ask for (at most one)."""
    if options.clipnorm is not None:
        return clip_by_norm(options.clipnorm)
    if options.global_clipnorm is not None:
        return clip_by_global_norm(options.global_clipnorm)
    if options.clipvalue is not None:
        return clip_by_value(options.clipvalue)
    return None


def _tree_mismatch_hint(expected, received) -> str:
    """`kopt.interop.flax.tree_mismatch_hint` (a state made from nnx Variables, plain
    gradients), or ''. Looked up in `sys.modules`, not imported: `kopt.interop.flax`
    imports this layer, and `import kopt` has always loaded it (the stateful facade
    imports it) by the time a transform runs."""
    hint = getattr(sys.modules.get("kopt.interop.flax"), "tree_mismatch_hint", None)
    return hint(expected, received) if callable(hint) else ""


def _flatten_grads(treedef, updates):
    try:
        return treedef.flatten_up_to(updates)
    except (ValueError, TypeError) as e:
        received = jax.tree.structure(updates)
        message = (f"The gradient tree does not match the optimizer state's tree. "
                   f"Expected structure {treedef}, received {received}.")
        hint = _tree_mismatch_hint(treedef, received)
        raise ValueError(f"{message} {hint}" if hint else message) from e


def _no_init(params):
    raise NotImplementedError("the rule runner's state is made by the engine's init")


def elementwise_transform(
    rule: Rule,
    state_cls: type,
    learning_rate: Any,
    options: Options | None = None,
    **overrides: Any,
) -> Transform:
    """Build a `Transform` from `rule`; `state_cls` is a NamedTuple with fields
    `count`, `learning_rate`, (at least) one per slot, and `ema`, `accum` and
    `micro_step` (defaulting to None) for the cross-cutting options, and `seed`
    (defaulting to None) for `state_dtype='bfloat16'`.

    `options` (an `Options`, default all off) holds the cross-cutting options; keyword
    `overrides` replace its fields (`elementwise_transform(rule, S, 0.1,
    state_dtype='int8')`). The rule runs in `kopt.functional.rule_runner`; around it,
    in Keras's order, the public transforms `unscale_gradients`, `accumulate_gradients`
    (around the clip transform and the rule) and `ema`, on views of this state."""
    lr = as_learning_rate(learning_rate)
    if options is None:
        options = Options(**overrides)
    elif overrides:
        options = options.replace(**overrides)
    # Array hyperparameters (optax.inject_hyperparams) may be traced: decide from them
    # in Python only where they can be read (`maybe_nonzero` is True for a traced value).
    steps = options.gradient_accumulation_steps
    accum_steps = steps if maybe_nonzero(steps) else None
    use_ema, decays = options.use_ema, maybe_nonzero(options.weight_decay)
    need_aux = bool(use_ema or accum_steps)
    rounding = _check_rule(rule, state_cls, options, need_aux)
    # The slot whose layout drives the runner: one stored in `state_dtype` if any.
    main_slot = next((n for n in rule.slots if rule.supports(n, options.state_dtype)),
                     rule.slots[0] if rule.slots else None)
    unscale = (None if options.loss_scale_factor is None
               else unscale_gradients(options.loss_scale_factor))
    clip = _clip(options)
    averaging = ema(options.ema_momentum, options.ema_overwrite_frequency) if use_ema else None

    def init_fn(params):
        _static_layout_args(bucket_threshold=options.bucket_threshold,
                            **({"min_quantized_size": options.min_quantized_size}
                               if options.state_dtype == "int8" else {}))
        slots = init_slots(rule, params, options.bucket_threshold, options.state_dtype,
                           options.min_quantized_size) if rule.slots else {}
        scalars = {name: jnp.asarray(v, jnp.float32) for name, v in rule.scalars.items()}
        if rounding:
            scalars["seed"] = jnp.zeros((), jnp.uint32)
        if need_aux:   # the cross-cutting state: full precision, the params' layout
            layout = plan(params, 0 if rule.per_leaf else options.bucket_threshold)
        if use_ema:   # zeros, as Keras; the first update sets it to the params
            slots["ema"] = Packed.full(layout, 0.0, like=params)
        if accum_steps:
            slots["accum"] = Packed.full(layout, 0.0, like=params)
            scalars["micro_step"] = jnp.zeros((), jnp.int32)
        state = lr.mark(state_cls(
            count=jnp.zeros((), jnp.int32), learning_rate=lr.initial(), **scalars, **slots
        ))
        return _on_params_mesh(state, params)

    def treedef_of(state, params, updates):
        if rule.slots:
            return getattr(state, main_slot).layout.treedef
        if need_aux:
            return (state.ema if use_ema else state.accum).layout.treedef
        return jax.tree.structure(params if params is not None else updates)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args   # accepted and ignored, as optax's GradientTransformationExtraArgs
        _check_params(rule, options, params)
        treedef = treedef_of(state, params, updates)
        g_all = _flatten_grads(treedef, updates)
        p_leaves = None if params is None else treedef.flatten_up_to(params)
        use_decay = (resolve_mask(options.weight_decay_mask, params, treedef)
                     if decays else None)
        if unscale is not None:   # unscale first, as Keras's `apply`
            g_all, _ = unscale.update(g_all, EmptyState())
        # Schedules read the raw number of calls (Keras's `_iterations`), which differs
        # from the update count only under gradient accumulation.
        raw_step = state.micro_step if accum_steps else state.count
        inner = RunnerState(
            {name: getattr(state, name) for name in (*rule.slots, *rule.scalars)},
            state.count, lr.value(state, raw_step), state.seed if rounding else None)

        def core_update(grads, inner, params=None, **extra_args):
            """Clip, then the rule (with weight decay)."""
            del extra_args
            if clip is not None:
                grads, _ = clip.update(grads, EmptyState())
            deltas, fields = run_rule(rule, options, main_slot, grads, inner, params,
                                      use_decay)
            return deltas, inner._replace(fields=fields)

        extra = {}
        if accum_steps:
            view = AccumulateState(state.count, state.micro_step, state.accum.to_leaves(),
                                   inner)
            deltas, view = accumulate_gradients(
                Transform(_no_init, core_update), accum_steps).update(g_all, view, p_leaves)
            count, inner = view.count, view.inner
            extra = {"accum": Packed.from_leaves(state.accum.layout, view.accum),
                     "micro_step": view.micro_step}
        else:
            deltas, inner = core_update(g_all, inner, p_leaves)
            count = state.count + 1
        if use_ema:   # Keras reads `iterations` (real updates before this call)
            deltas, averaged = averaging.update(
                deltas, EmaState(state.count, state.ema.to_leaves()), p_leaves)
            extra["ema"] = Packed.from_leaves(state.ema.layout, averaged.ema)
        new_state = state._replace(count=count, learning_rate=lr.next(state, raw_step + 1),
                                   **inner.fields, **extra)
        return treedef.unflatten(deltas), new_state

    return Transform(init_fn, update_fn)


def _on_params_mesh(state, params):
    """An eager `init`'s state, placed like the params when they live on a mesh: each
    param's slots sharded like it, counters and buckets replicated on the mesh (not on one
    local device, which orbax refuses to save across processes). A traced `init` is left
    to jit's `out_shardings`."""
    leaves = jax.tree.leaves(params)
    if not leaves or any(is_traced(x) for x in leaves):
        return state
    if not any(isinstance(getattr(x, "sharding", None), NamedSharding) for x in leaves):
        return state
    return jax.device_put(state, state_shardings(state, params))
