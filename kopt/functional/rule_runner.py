"""The rule runner: a `Rule`'s slots kept in buckets, per leaf and in low precision.

`init_slots` makes the slot state of a rule; `run_rule` makes one update of it: the
rule's scalars advance, the rule runs once per bucket of small leaves and once per other
leaf (block-wise on quantised leaves), the new slots are stored (stochastically rounded
in bfloat16 and int8), and decoupled weight decay is added. It knows nothing of Keras's
cross-cutting options (loss scaling, accumulation, EMA, clipping): the Keras-order
wrapper, `kopt.functional.elementwise.elementwise_transform`, composes those around it
from the public transforms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.buckets import OWN, Packed, Stub, plan, state_dtype_for
from kopt.functional.quantize import blockwise_step, rounding_key, stochastic_round
from kopt.functional.validation import maybe_nonzero

__all__ = ["init_slots", "run_rule", "RunnerState"]


def _full_precision(layout):
    """`layout` with its quantised (int8) entries kept in float32, in the same places."""
    return dataclasses.replace(layout, dtypes=tuple(
        "float32" if d == "int8" else d for d in layout.dtypes))


def init_slots(rule, params, bucket_threshold, state_dtype, min_quantized_size) -> dict:
    """The initial `Packed` of every slot of `rule` for `params`."""
    threshold = 0 if rule.per_leaf else bucket_threshold
    layout = plan(params, threshold, state_dtype, min_quantized_size)
    slots = {}
    if rule.init is not None:
        p_leaves = layout.treedef.flatten_up_to(params)
        for name in rule.slots:
            arrays = [jnp.asarray(rule.init(name, jnp.asarray(p), i))
                      for i, p in enumerate(p_leaves)]
            if state_dtype is not None:
                arrays = [a.astype(layout.dtypes[i]) for i, a in enumerate(arrays)]
            # A zero-size entry (Muon's empty `v`) is a Stub: orbax cannot save it.
            entries = [Stub(tuple(a.shape), a.dtype.name, False) if a.size == 0 else a
                       for a in arrays]
            slots[name] = Packed(None, layout.treedef.unflatten(entries))
        return slots
    for name in rule.slots:
        lay = layout if rule.supports(name, state_dtype) else _full_precision(layout)
        slots[name] = Packed.full(lay, rule.fill.get(name, 0.0), like=params,
                                  signed=name not in rule.nonnegative)
    return slots


class RunnerState(NamedTuple):
    """What one update of the rule reads: its slots and scalars (`fields`, the part it
    returns new), and the step inputs, returned unchanged."""

    fields: dict          # slot name -> Packed, scalar name -> float32 scalar
    count: jax.Array      # int32 updates before this one
    rate: jax.Array       # the learning rate of this update
    seed: Any             # uint32 stochastic-rounding seed, or None


class _Step:
    """The values one update shares between its buckets and leaves."""

    def __init__(self, rule, state_dtype, layout, scalars, rate, t, seed):
        self.rule, self.state_dtype, self.layout = rule, state_dtype, layout
        self.scalars, self.rate, self.t, self.seed = scalars, rate, t, seed
        # With bfloat16 state, the increment comes from the stored state (`Rule.update`).
        self.from_stored = state_dtype == "bfloat16" and rule.update is not None

    def call(self, fn, g, slots, dtype, param=None, leaf=None):
        """`rule.step` or `rule.update` on `g` and `slots` (plus the scalars), in `dtype`."""
        slots = {**slots, **{n: x.astype(dtype) for n, x in self.scalars.items()}}
        args = (g, slots, self.rate.astype(dtype), self.t.astype(dtype))
        if self.rule.needs_params:
            args += (param,)
        if self.rule.leaf_info:
            return fn(*args, leaf=leaf, layout=self.layout)
        return fn(*args)

    def keys(self, part):
        """The stochastic-rounding key of each slot of leaf or bucket `part`."""
        n_parts = self.layout.num_leaves + len(self.layout.buckets)
        return {n: rounding_key(self.seed, self.t, k * n_parts + part)
                for k, n in enumerate(self.rule.slots)}

    def store(self, g, new, dtype, part, param=None, leaf=None):
        """`(delta, new slots in their storage dtype)`: bfloat16 by stochastic rounding,
        the increment then from the stored state where the rule says how; other dtypes
        are cast at the end."""
        if self.state_dtype != "bfloat16":
            return None, new
        new = {n: stochastic_round(new[n], key) for n, key in self.keys(part).items()}
        if not self.from_stored:
            return None, new
        new = jax.lax.optimization_barrier(new)
        d = self.call(self.rule.update, g, {n: x.astype(dtype) for n, x in new.items()},
                      dtype, param, leaf)
        return d, new


def _flat(arrays):
    return jnp.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def _runtime_offsets(offsets, t):
    """`offsets` as int32 scalars whose values XLA cannot see at compile time.

    Each leaf's update is `dynamic_slice(bucket_update, offset)`. With the offset a
    compile-time constant, XLA bakes it into the leaf's kernel, so every leaf gets a
    kernel of its own; XLA:CPU compiles each through LLVM (about 20 ms each: a 1000-leaf
    step took 3x optax's compile time). With the offset a runtime value, the kernels of
    same-shaped leaves are identical and XLA compiles one of them.

    The offsets become runtime values by passing through a loop on `t` (the update's
    count, at least 1, so the loop never runs) that swaps two copies of them: XLA can
    neither fold the loop nor see its outputs as constants, and whatever number of times
    it ran, its outputs would still be `offsets`. Not on GPU and TPU, which do not need it
    and where a loop costs a host round trip: there the offsets stay constants.
    """
    if len(offsets) < 2 or jax.default_backend() != "cpu":
        return [np.int32(o) for o in offsets]
    a = tuple(jnp.asarray(o, jnp.int32) for o in offsets)
    _, out, _ = jax.lax.while_loop(lambda c: c[0] < 0, lambda c: (c[0] + 1, c[2], c[1]),
                                   (t, a, a))
    return list(out)


def _run_bucket(step, b, grads, seen, old, deltas, new_buckets):
    """The rule on bucket `b`: its members' gradients (zeros where None) in one array."""
    layout, rule = step.layout, step.rule
    dtype, size = layout.buckets[b]
    members = layout.members(b)
    live = [i for i in members if grads[i] is not None]
    if not live:
        return
    dtype = state_dtype_for(dtype)   # compute dtype: float32 for bfloat16 state

    def gather(arrays):
        return _flat([jnp.ravel(arrays[i]).astype(dtype) if grads[i] is not None
                      else jnp.zeros((layout.place[i][2],), dtype) for i in members])

    g_flat = gather(grads)
    p_flat = gather(seen) if rule.needs_params else None
    d_flat, s_flat = step.call(rule.step, g_flat, {n: old[n].buckets[b].astype(dtype)
                                                   for n in rule.slots}, dtype, p_flat)
    d_stored, s_flat = step.store(g_flat, s_flat, dtype, layout.num_leaves + b, p_flat)
    d_flat = d_flat if d_stored is None else d_stored
    # Materialise the bucket's results once. Without the barrier XLA fuses the whole
    # concatenate-and-update into every per-leaf slice below, which is quadratic in the
    # number of leaves at compile time and at run time.
    d_flat, s_flat = jax.lax.optimization_barrier((d_flat, s_flat))
    if len(live) < len(members):   # keep the state of skipped leaves
        keep = np.zeros((size,), bool)
        for i in live:
            _, off, n = layout.place[i]
            keep[off:off + n] = True
        s_flat = {n: jnp.where(keep, s_flat[n], old[n].buckets[b]) for n in s_flat}
    for n in rule.slots:
        new_buckets[n][b] = s_flat[n]
    offsets = _runtime_offsets([layout.place[i][1] for i in live], step.t)
    for i, off in zip(live, offsets):
        n = layout.place[i][2]
        deltas[i] = jax.lax.dynamic_slice(d_flat, (off,), (n,)).reshape(layout.shapes[i])


def _run_leaf(step, i, grads, seen, old, own):
    """The rule on leaf `i` (its own array, or quantised, or an empty entry)."""
    layout, rule = step.layout, step.rule
    dtype = state_dtype_for(layout.dtypes[i])   # compute dtype
    param = seen[i].astype(dtype) if rule.needs_params else None
    if layout.dtypes[i] == "int8":
        return blockwise_step(
            lambda g, s, p: step.call(rule.step, g, s, jnp.float32, p, leaf=i),
            grads[i], {n: old[n].leaves[i] for n in rule.slots}, param, step.keys(i))
    g = grads[i].astype(dtype)
    d, s = step.call(rule.step, g, {
        n: (old[n].leaves[i] if own[n][i] else old[n].leaf(i)).astype(dtype)
        for n in rule.slots}, dtype, param, leaf=i)
    d_stored, s = step.store(g, s, dtype, i, param, leaf=i)
    return (d if d_stored is None else d_stored), s


def _run_slots(step, grads, seen, old, deltas):
    """The rule on every bucket and leaf: the new `Packed` of each slot."""
    layout, rule = step.layout, step.rule
    new_buckets = {name: list(old[name].buckets) for name in rule.slots}
    new_large = {name: list(old[name].leaves) for name in rule.slots}
    own = {name: [k == OWN for k, _, _ in old[name].layout.place] for name in rule.slots}
    for b in range(len(layout.buckets)):
        _run_bucket(step, b, grads, seen, old, deltas, new_buckets)
    for i in layout.unbucketed():   # own arrays, and empty (zero-size) entries
        if grads[i] is None:
            continue
        deltas[i], s = _run_leaf(step, i, grads, seen, old, own)
        for n in rule.slots:
            new_large[n][i] = s[n]
    return {   # empty entries stay Stubs, whatever the rule returned for them
        n: Packed.from_parts(old[n].layout, new_buckets[n],
                             [x if own[n][i] else None for i, x in enumerate(new_large[n])])
        for n in rule.slots
    }


def run_rule(rule, options, main_slot, grads, state: RunnerState, p_leaves, use_decay):
    """One update: `(deltas, new fields)`. `grads` and `p_leaves` (None unless the rule
    or weight decay reads the params) are flat lists (a None gradient: skipped leaf);
    `use_decay` is the resolved `weight_decay_mask` (one bool per leaf) where
    `options.weight_decay` is on."""
    present = [i for i, g in enumerate(grads) if g is not None]
    rate, t = state.rate, state.count + 1
    weight_decay = options.weight_decay
    decays = maybe_nonzero(weight_decay)
    scalars = {}
    if rule.scalars:
        old_scalars = {name: state.fields[name] for name in rule.scalars}
        scalars = {name: jnp.asarray(x, jnp.float32) for name, x in
                   rule.advance(old_scalars, t, rate.astype(jnp.float32)).items()}
    # The params as the rule sees them: after decoupled weight decay (Keras's order).
    seen: list[Any] = [None] * len(grads)
    if rule.needs_params:
        for i in present:
            p = jnp.asarray(p_leaves[i])
            if decays and use_decay[i]:
                p = p - p * (weight_decay * rate.astype(p.dtype))
            seen[i] = p
    deltas: list[Any] = [None] * len(grads)
    new_slots = {}
    layout = state.fields[main_slot].layout if rule.slots else None
    step = _Step(rule, options.state_dtype, layout, scalars, rate, t, state.seed)
    if layout is None:
        for i in present:
            param = seen[i].astype(grads[i].dtype) if rule.needs_params else None
            deltas[i], _ = step.call(rule.step, grads[i], {}, grads[i].dtype, param, leaf=i)
    else:
        new_slots = _run_slots(step, grads, seen, {n: state.fields[n] for n in rule.slots},
                               deltas)
    for i in present:
        if decays and use_decay[i]:
            dt = deltas[i].dtype
            deltas[i] = deltas[i] - p_leaves[i].astype(dt) * (weight_decay * rate.astype(dt))
        deltas[i] = deltas[i].astype(grads[i].dtype)
    fields = dict(state.fields)
    for name, x in scalars.items():
        fields[name] = x.astype(fields[name].dtype)
    for name, x in new_slots.items():   # keep the state's dtypes (lax.cond needs them)
        fields[name] = jax.tree.map(lambda a, b: a.astype(b.dtype), x, fields[name])
    return deltas, fields
