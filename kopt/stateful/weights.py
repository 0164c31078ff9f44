"""Weights I/O of the stateful facade, as pure functions of the functional state.

Two layouts of one state (see `Optimizer.get_weights` and `Optimizer.variables`):

- the legacy tf.keras list (`weight_arrays`, `state_from_weights`): the iteration count,
  the shared scalars, then the per-variable slots slot by slot (`slot_entries`);
- Keras 3's `variables` order (`keras_entries`, `entry_value`, `unflatten_entries`),
  whose entries are `(field, variable index or None, part or None)`.

Nothing here holds or changes an optimizer: each function reads the state it is given
and returns arrays or a new state.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kopt.functional.buckets import Packed
from kopt.functional.quantize import Quantized

__all__ = ["KERAS_SLOT_NAMES", "check_count", "entry_arrays", "entry_name", "entry_value",
           "host_array", "keras_entries", "slot_entries", "slot_leaf", "state_from_weights",
           "unflatten_entries", "weight_arrays", "weight_fields"]

KERAS_SLOT_NAMES = {"m": "momentum", "v": "velocity", "vhat": "velocity_hat",
                    "ema": "average", "accum": "gradient_accumulator"}
"""Keras 3's names for kopt's state fields, used in `optimizer.variables` names."""

INT32_MAX = int(np.iinfo(np.int32).max)


def host_array(w, what: str, like=None) -> np.ndarray:
    """`w` as a fresh host array of real numbers, shaped like `like` (when given).

    Raw 2-byte records (`|V2`, what `np.savez` writes for bfloat16) are read as bfloat16.
    """
    w = np.array(w, copy=True)
    like_dtype = getattr(like, "dtype", None)
    if w.dtype.kind == "V" and like_dtype is not None and w.dtype.itemsize == np.dtype(like_dtype).itemsize:
        w = w.view(like_dtype)
    if not (jnp.issubdtype(w.dtype, jnp.floating) or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(
            f"set_weights: {what} has dtype {w.dtype}; expected a real number array.")
    if like is not None and w.shape != tuple(like.shape):
        raise ValueError(
            f"set_weights: {what} has shape {w.shape}, expected {tuple(like.shape)}.")
    return w


def check_count(count: np.ndarray, what: str) -> None:
    """An iteration count: a 0-d integer (or integral float) in [0, 2**31 - 1]."""
    ok = count.shape == () and (np.issubdtype(count.dtype, np.integer) or (
        jnp.issubdtype(count.dtype, jnp.floating) and np.isfinite(count)
        and float(count) == int(count)))
    if not ok:
        raise ValueError(
            f"{what} must be a 0-d integer. Received shape {count.shape}, dtype {count.dtype}.")
    if not 0 <= int(count) <= INT32_MAX:
        raise ValueError(f"{what} must be in [0, {INT32_MAX}]. Received: {int(count)}")


def slot_leaf(field, j):
    """Variable `j`'s entry of a per-variable field (a `Packed` or a tuple)."""
    return field.leaf(j) if isinstance(field, Packed) else field[j]


def entry_arrays(leaf) -> list:
    """The `get_weights` arrays of one slot entry: the array itself, or, for a quantised
    entry (int8 state), its codes and then its block scales."""
    if isinstance(leaf, Quantized):
        return [leaf.codes, leaf.absmax]
    return [leaf]


def weight_fields(state, n: int, owner: str = "Optimizer"):
    """The state's fields that `get_weights` lists: `(scalars, slots)`.

    `scalars` are 0-d fields shared by all variables (Nadam's `momentum_cache`);
    `slots` are the per-variable fields: a `Packed`, or a tuple with one array per
    variable (Adafactor's factored rows, whose shapes differ from the variable's).
    Both in field order, after `count` and `learning_rate`; fields that are None (a
    disabled option) are left out. `n` is the number of variables.
    """
    scalars, slots = [], []
    for f in state._fields[2:]:
        x = getattr(state, f)
        if x is None:
            continue
        if isinstance(x, Packed) or (isinstance(x, tuple) and len(x) == n
                                     and all(a is None or hasattr(a, "shape") for a in x)):
            slots.append(f)
        elif getattr(x, "shape", None) == ():
            scalars.append(f)
        else:
            raise TypeError(
                f"{owner}: state field {f!r} is neither a 0-d scalar nor "
                "per-variable; it cannot be listed by get_weights.")
    return scalars, slots


def slot_entries(state, slots, n: int) -> list[tuple[str, int]]:
    """`(slot, variable index)` for each per-variable entry, in `get_weights` order.

    Slot by slot, unless the state class sets `weights_by_variable = True` (Ftrl):
    then variable by variable, each with all its slots.
    """
    if getattr(type(state), "weights_by_variable", False):
        return [(name, j) for j in range(n) for name in slots]
    return [(name, j) for name in slots for j in range(n)]


def weight_arrays(state, n: int, owner: str = "Optimizer") -> list:
    """The live arrays of the `get_weights` layout."""
    scalars, slots = weight_fields(state, n, owner)
    out = [state.count]
    out.extend(getattr(state, name) for name in scalars)
    for name, j in slot_entries(state, slots, n):
        leaf = slot_leaf(getattr(state, name), j)
        if leaf is not None:
            out.extend(entry_arrays(leaf))
    return out


def _slot_from_weights(weights, k: int, like, desc: str):
    """Slot entry `like` read from `weights[k:]`: `(leaf, number of arrays used)`."""
    if not isinstance(like, Quantized):
        return jnp.array(host_array(weights[k], f"entry {k} ({desc})", like), like.dtype), 1
    codes = host_array(weights[k], f"entry {k} ({desc}, codes)", like.codes)
    info = np.iinfo(like.codes.dtype)
    if not np.issubdtype(codes.dtype, np.integer) or (
            codes.size and (codes.min() < info.min or codes.max() > info.max)):
        raise ValueError(
            f"set_weights: entry {k} ({desc}, codes) must hold integers in "
            f"[{info.min}, {info.max}] ({like.codes.dtype}).")
    scales = host_array(weights[k + 1], f"entry {k + 1} ({desc}, block scales)", like.absmax)
    return Quantized(jnp.array(codes, like.codes.dtype), jnp.array(scales, jnp.float32),
                     like.shape, like.signed), 2


def state_from_weights(weights: list, state, var_names: list[str], owner: str = "Optimizer"):
    """`state` with every array replaced by those of `weights` (a `get_weights` list),
    each validated (count, shapes, dtypes, int8 code ranges) before any is used.

    The learning rate is left as in `state`; the result is not placed on devices.
    """
    n = len(var_names)
    scalars, names = weight_fields(state, n, owner)
    entries = slot_entries(state, names, n)
    current = [slot_leaf(getattr(state, name), j) for name, j in entries]
    expected = 1 + len(scalars) + sum(len(entry_arrays(c)) for c in current if c is not None)
    if len(weights) != expected:
        shared = f"{len(scalars)} scalar(s) {scalars}, then " if scalars else ""
        n_quantized = sum(isinstance(c, Quantized) for c in current)
        quantized = (f", {n_quantized} of them quantised (codes and scales)"
                     if n_quantized else "")
        raise ValueError(
            f"set_weights expected a list of {expected} arrays (iterations, then {shared}"
            f"{len(names)} slot(s) {names} for each of {n} variables{quantized}); "
            f"received {len(weights)}."
        )
    count = host_array(weights[0], "entry 0 (the iteration count)")
    check_count(count, "set_weights: entry 0 (the iteration count)")
    new = {}
    for k, name in enumerate(scalars, start=1):
        like = getattr(state, name)
        new[name] = jnp.array(host_array(weights[k], f"entry {k} ({name})", like), like.dtype)
    leaves = {name: [None] * n for name in names}
    k = 1 + len(scalars)
    for (name, j), like in zip(entries, current):
        if like is not None:
            desc = f"{name} of variable {var_names[j]!r}"
            leaves[name][j], used = _slot_from_weights(weights, k, like, desc)
            k += used
    for name in names:
        field = getattr(state, name)
        new[name] = (Packed.from_leaves(field.layout, leaves[name]) if isinstance(field, Packed)
                     else tuple(leaves[name]))
    return state._replace(count=jnp.asarray(int(count), jnp.int32), **new)


def keras_entries(state, n: int, schedule: bool, slot_groups=(),
                  owner: str = "Optimizer") -> list[tuple]:
    """What `variables` lists, in Keras 3's order: `(field, variable index, part)`.

    The iteration count (with gradient accumulation, the raw call count, as Keras's
    `iteration` variable), the learning rate unless it is a `schedule`, then the slots
    in Keras's creation order: the EMA averages and gradient accumulators, then the
    optimizer's `slot_groups` (fields Keras creates together, e.g. Adam's
    `(("m", "v"), ("vhat",))`), each group variable by variable; last, the optimizer's
    other scalars. A quantised slot gives two entries, its codes and its scales; a slot
    entry that holds nothing (None, or Muon's empty `v`) gives none.
    """
    scalars, slots = weight_fields(state, n, owner)
    counter = "micro_step" if "micro_step" in scalars else "count"
    entries = [(counter, None, None)]
    if not schedule:
        entries.append(("learning_rate", None, None))
    groups = [(f,) for f in ("ema", "accum") if f in slots]
    emitted = {"ema", "accum"}
    for f in slots:
        if f not in emitted:
            group = next((g for g in slot_groups if f in g), (f,))
            groups.append(tuple(x for x in group if x in slots))
            emitted.update(group)
    for group in groups:
        for j in range(n):
            for f in group:
                leaf = slot_leaf(getattr(state, f), j)
                if isinstance(leaf, Quantized):
                    entries += [(f, j, "codes"), (f, j, "absmax")]
                elif leaf is not None and leaf.size:
                    entries.append((f, j, None))
    entries += [(f, None, None) for f in scalars if f != counter]
    return entries


def entry_name(entry, var_names: list[str], slot_names: dict[str, str]) -> str:
    """A `variables` entry's Keras-style name: `iteration`, `learning_rate`, or
    `<variable>_<slot>` (`slot_names` first, then `KERAS_SLOT_NAMES`)."""
    field, j, part = entry
    if j is None:
        return "iteration" if field in ("count", "micro_step") else field
    base = var_names[j].split("/")[-1]
    slot = slot_names.get(field) or KERAS_SLOT_NAMES.get(field, field)
    name = f"{base}_{slot}"
    return name if part is None else f"{name}_{'scales' if part == 'absmax' else part}"


def entry_value(state, entry):
    """One `variables` entry's array in `state` (see `keras_entries`)."""
    field, j, part = entry
    x = getattr(state, field)
    if j is None:
        return x
    leaf = slot_leaf(x, j)
    return leaf if part is None else getattr(leaf, part)


def unflatten_entries(entries, flat, template):
    """The state `template` with the arrays of `entries` replaced by `flat` (traceable)."""
    fields, slots = {}, {}
    for (field, j, part), x in zip(entries, flat):
        if j is None:
            fields[field] = jnp.asarray(x, getattr(template, field).dtype)
        else:
            slots.setdefault(field, {})[(j, part)] = x
    for field, values in slots.items():
        old = getattr(template, field)
        n = old.layout.num_leaves if isinstance(old, Packed) else len(old)
        leaves = []
        for j in range(n):
            like = slot_leaf(old, j)
            if isinstance(like, Quantized):
                leaves.append(Quantized(jnp.asarray(values[(j, "codes")], like.codes.dtype),
                                        jnp.asarray(values[(j, "absmax")], jnp.float32),
                                        like.shape, like.signed))
            elif like is None:
                leaves.append(None)
            else:
                leaves.append(jnp.asarray(values[(j, None)], like.dtype))
        fields[field] = (Packed.from_leaves(old.layout, leaves) if isinstance(old, Packed)
                         else tuple(leaves))
    return template._replace(**fields)
