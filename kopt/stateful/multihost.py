"""Moving arrays between the host and a global mesh when JAX runs as several processes.

With `jax.distributed.initialize`, each process addresses only its own devices, and an
array sharded over a global `Mesh` is not *fully addressable*: no process holds all of
it, and `np.asarray(x)` raises JAX's "spans non-addressable devices" error. These helpers
give the stateful facade the semantics JAX users know from `multihost_utils`, orbax and
`keras.distribution`:

- `to_host(x)`: the whole value, as numpy, on every process. **A collective**: when a
  process does not hold every part of an array, the arrays are all-gathered, so every
  process must call it, with the same arrays in the same order (as with
  `multihost_utils.process_allgather`); a process that skips the call makes the others
  wait for it. With one process, or arrays each process holds entirely (replicated, or
  split only over its own devices), nothing is exchanged.
- `from_host(value, like)`: a full host value built straight onto `like`'s sharding; each
  process makes its own shards from its own copy, so no data crosses processes.
  `from_host_tree(values, likes)` does a whole tree, after checking (a collective) that
  every process passed the same values.
- `local_view(x)`: the parts of `x` this process holds, for logging. Not a collective.
- `check_picklable(tree, what)`: the clear error raised when something that spans
  several processes is pickled; a pickle holds one process's host data, so checkpoint
  with orbax instead (each process writes its own shards).

Everything here also works with one process, where it reduces to `np.asarray` and
`jax.device_put`.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["to_host", "from_host", "from_host_tree", "local_view", "LocalShard",
           "check_picklable", "variable_getstate", "is_fully_local"]

PyTree = Any


def _is_global(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _index_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple:
    return tuple(s.indices(n) for s, n in zip(index, shape))


def is_fully_local(x: jax.Array) -> bool:
    """Whether this process holds every part of `x` on its own devices."""
    if not _is_global(x):
        return True
    shape = x.shape
    local = {_index_key(s.index, shape) for s in x.addressable_shards}
    every = {_index_key(i, shape) for i in x.sharding.devices_indices_map(shape).values()}
    return every <= local


def _held_by_every_process(x: jax.Array) -> bool:
    """Whether each process holds every part of `x`: computed from the sharding alone,
    so all processes agree on it (and so on whether `to_host` gathers)."""
    shape = x.shape
    held: dict[int, set] = {}
    for device, index in x.sharding.devices_indices_map(shape).items():
        held.setdefault(device.process_index, set()).add(_index_key(index, shape))
    every = set().union(*held.values())
    return all(parts == every for parts in held.values())


def _assemble_local(x: jax.Array) -> np.ndarray:
    """`x` as numpy, from this process's own shards (they cover all of it)."""
    out = np.empty(x.shape, x.dtype)
    done = set()
    for s in x.addressable_shards:
        key = _index_key(s.index, x.shape)
        if key not in done:
            done.add(key)
            out[s.index] = np.asarray(s.data)
    return out


def _identity(xs):
    return xs


def _gather(xs: list[jax.Array]) -> list[np.ndarray]:
    """All-gather arrays no process holds entirely: one compiled call per mesh."""
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(xs):
        if not isinstance(x.sharding, NamedSharding):
            raise ValueError(
                "to_host can gather arrays with a NamedSharding (over a jax.sharding.Mesh) "
                f"only. Received an array of shape {x.shape} with sharding {x.sharding}; "
                "put it on a mesh (jax.device_put(x, NamedSharding(mesh, spec))) first.")
        groups.setdefault(x.sharding.mesh, []).append(i)
    out: list[np.ndarray | None] = [None] * len(xs)
    for mesh, idx in groups.items():
        replicated = [NamedSharding(mesh, P()) for _ in idx]
        gathered = jax.jit(_identity, out_shardings=replicated)([xs[i] for i in idx])
        for i, g in zip(idx, gathered):
            out[i] = np.asarray(g.addressable_data(0))
    return out


def to_host(tree: PyTree) -> PyTree:
    """`tree` with every array replaced by its whole value as a numpy array.

    **A collective when JAX runs as several processes**: an array that this process does
    not hold entirely is all-gathered over the processes, so every process must call
    `to_host` on the same arrays, in the same order. Arrays that every process holds
    entirely (replicated, or split over one process's devices only) are read locally;
    so is everything with one process. Non-array leaves go through `np.asarray`.

    Args:
      tree: a `jax.Array`, a numpy array or scalar, or a pytree of them.

    Returns:
      The same structure with numpy arrays, equal on every process.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out: list[Any] = [None] * len(leaves)
    pending = []
    for i, x in enumerate(leaves):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            out[i] = np.asarray(x)
        elif _held_by_every_process(x):
            out[i] = _assemble_local(x)
        else:
            pending.append(i)
    if pending:
        for i, g in zip(pending, _gather([leaves[i] for i in pending])):
            out[i] = g
    return treedef.unflatten(out)


def from_host(value, like) -> jax.Array:
    """The full host array `value` as a `jax.Array` placed like `like`.

    The array is built straight onto `like.sharding` with `jax.make_array_from_callback`:
    each process makes the shards of its own devices from its own copy of `value`, so
    no data crosses processes, and every process must pass the same `value` (see
    `from_host_tree`, which checks it). Not a collective.

    Args:
      value: array-like with `like`'s shape; cast to `like`'s dtype.
      like: a `jax.Array` or a `jax.ShapeDtypeStruct` (its `sharding` may be None: then
        the default device).
    """
    shape, dtype = tuple(like.shape), like.dtype
    host = np.asarray(value)
    if host.shape != shape:
        raise ValueError(
            f"from_host: the value has shape {host.shape}, expected {shape}. "
            f"Received: value of shape {host.shape}")
    host = host.astype(dtype, copy=False)
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(shape, sharding, lambda index: host[index])


def _digest(leaves: list[np.ndarray]) -> np.ndarray:
    h = hashlib.sha256()
    for x in leaves:
        h.update(repr((x.shape, str(x.dtype))).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return np.frombuffer(h.digest()[:16], np.uint32)


def from_host_tree(values: PyTree, likes: PyTree, what: str = "values") -> PyTree:
    """`from_host` for every leaf of `values`, placed like the matching leaf of `likes`.

    `values` may hold host arrays or `jax.Array`s (read with `to_host`, a collective for
    arrays no process holds entirely). Validates everything before building anything.
    With several processes it first
    checks, with a small all-gather (**a collective**: every process must call it), that
    every process passed the same values, and raises `ValueError` naming `what` if not:
    built from different values, an array would silently hold each process's own
    shards of different data.
    """
    values_flat, treedef = jax.tree.flatten(values)
    likes_flat = treedef.flatten_up_to(likes)
    hosts = to_host(values_flat)
    for k, (h, like) in enumerate(zip(hosts, likes_flat)):
        if h.shape != tuple(like.shape):
            raise ValueError(f"{what}: leaf {k} has shape {h.shape}, expected "
                             f"{tuple(like.shape)}.")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        digests = multihost_utils.process_allgather(_digest(hosts))
        differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
        if differ:
            raise ValueError(
                f"{what}: the values differ between processes: process(es) {differ} "
                "passed other values than process 0. Every process must pass the same full host "
                "arrays; nothing was changed.")
    return treedef.unflatten([from_host(h, like) for h, like in zip(hosts, likes_flat)])


class LocalShard(NamedTuple):
    index: tuple[slice, ...]   # where this part lies in the whole array
    data: np.ndarray           # its values


def local_view(x) -> list[LocalShard]:
    """The parts of `x` this process holds, as numpy, one per distinct index.

    For logging and inspection from one process (not a collective): a replicated array
    gives one part, the whole array; an array split over the processes gives this
    process's parts only. A numpy array or a fully addressable array gives one part.
    """
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        return [LocalShard(tuple(slice(0, n) for n in x.shape), x)]
    parts, seen = [], set()
    for s in sorted(x.addressable_shards, key=lambda s: _index_key(s.index, x.shape)):
        key = _index_key(s.index, x.shape)
        if key not in seen:
            seen.add(key)
            parts.append(LocalShard(tuple(slice(*k[:2]) for k in key), np.asarray(s.data)))
    return parts


def check_picklable(tree: PyTree, what: str) -> None:
    """Raise `TypeError` if `tree` holds an array no process holds entirely.

    A pickle holds one process's host data; it cannot hold the shards of the others,
    nor restore them to their devices. Checkpoint with orbax instead.
    """
    for x in jax.tree.leaves(tree):
        if _is_global(x) and not is_fully_local(x):
            raise TypeError(
                f"Cannot pickle {what}: it holds arrays split over the devices of several "
                f"processes (jax.process_count()={jax.process_count()}), and a pickle "
                "holds one process's data. Save a checkpoint with orbax instead "
                "(orbax.checkpoint.CheckpointManager of opt.state and the variables' "
                "values; every process writes its own shards and restores them onto the "
                "mesh), or gather host copies with get_weights() / Variable.numpy() "
                "(collectives).")


def variable_getstate(var) -> tuple[None, dict[str, Any]]:
    """`Variable.__getstate__`: the slots, after `check_picklable` on the value."""
    check_picklable(var._value, f"Variable {var.name!r}")
    return None, {k: getattr(var, k) for k in type(var).__slots__
                  if k != "__weakref__" and hasattr(var, k)}
