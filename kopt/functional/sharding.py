"""Sharded optimizer state on a `jax.sharding.Mesh`.

kopt's transforms are plain JAX, so under `jax.jit` XLA partitions them like any other
code: a step on sharded params and state keeps their shardings, and reductions such as
the global norm of `global_clipnorm` run across shards. What needs help is where the
state is *created*, and where it should be laid out unlike the params:

- `state_shardings(tx, params)` gives the sharding of every leaf of `tx.init(params)`:
  state that belongs to a param takes its sharding, the rest is replicated. On a mesh
  with `Auto` axes a traced `init` cannot see the params' shardings, so pass it as
  `jax.jit(tx.init, out_shardings=...)`. On a mesh with `Explicit` axes (the default of
  `jax.make_mesh`), shardings are part of the params' types, and a plain
  `jax.jit(tx.init)` inside `jax.set_mesh(mesh)` already follows them; so does an eager
  `tx.init(params)` in both modes, for the state shaped like the params.
- `shard_state(tx, mesh, axis)` splits the optimizer state over a data-parallel mesh axis
  while the params stay replicated, as in ZeRO stage 1: each device stores and updates
  `1 / mesh.shape[axis]` of every state leaf, and the updates are all-gathered.
- `aggregate_gradients(axis_name, op)` sums or averages the per-device gradients over a
  mapped axis, for steps written per device with `jax.shard_map` (or `jax.pmap`).

Bucketing (`bucket_threshold`, see `kopt.functional.buckets`) packs small leaves into one
replicated flat buffer. A leaf whose type says it is split across devices (a mesh with
`Explicit` axes) is left out of the bucket. On a mesh with `Auto` axes the type does not
say, and a small split leaf is packed, by an eager and a jitted `init` alike, so that
both give one state structure (correct, but the step then gathers it): use `Explicit`
axes, or set `bucket_threshold=0`, to keep every leaf's state sharded like it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, Sharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from kopt.functional.base import Transform, call_update
from kopt.functional.clipping import EmptyState
from kopt.functional.quantize import Quantized, block_spec, explicit_axes

__all__ = ["state_shardings", "shard_state", "split_spec", "aggregate_gradients",
           "unpack_bucket"]

PyTree = Any

# Mesh axis types (Auto / Explicit) are recent in JAX; without them every axis is Auto.
_EXPLICIT = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)


def _is_none(x) -> bool:
    return x is None


# ------------------------------------------------------------------ state like the params
def _replicated_sharding(shardings: list[Sharding | None]) -> Sharding:
    """Where the state that belongs to no param goes: replicated like the params.

    Over the mesh of the first `NamedSharding`; else over the devices of the first other
    sharding (its one device for a `SingleDeviceSharding`); else, with no sharding at all
    (host arrays, abstract params), on this process's first device. Never on another
    process's device, which this process could not read: in a run of several processes,
    each one's params without a mesh live on its own devices.
    """
    for s in shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, P())
    for s in shardings:
        if s is not None:
            devices = sorted(s.device_set, key=lambda d: d.id)
            if len(devices) == 1:
                return SingleDeviceSharding(devices[0])
            return NamedSharding(Mesh(np.array(devices), ("devices",)), P())
    return SingleDeviceSharding(jax.local_devices()[0])


def state_shardings(tx_or_state: Transform | PyTree, params: PyTree) -> PyTree:
    """The sharding of each leaf of an optimizer state, following the params.

    A state leaf that belongs to a param takes that param's sharding: Adam's `m` and `v`
    for it, say. Everything else (step counts, learning rates, a `Packed` bucket of small
    leaves, factored moments whose shape differs from the param's) is replicated on the
    params' mesh; under jit, XLA then shards what the step computes from sharded values.

    A state leaf belongs to a param when its key path in the state ends with the param's
    key path in `params` and its shape is the param's (a `Packed` slot's leaves have
    the paths of its layout), so kopt's, optax's, chained and partitioned states all work.

    Args:
      tx_or_state: a transform, whose `tx.init(params)` is traced (`jax.eval_shape`:
        nothing is computed), or a state already made (concrete, abstract or restored).
      params: `jax.Array`s, or `jax.ShapeDtypeStruct`s with a `sharding`.

    Build the state in place under jit, place a state made eagerly (its counters are made
    on one device), or give the target shardings to a checkpoint restore:

    >>> import jax, jax.numpy as jnp, kopt
    >>> from kopt.functional.sharding import state_shardings
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> w = jnp.ones((1024, 128))  # larger than the bucket threshold: state of its own
    >>> params = jax.device_put({"w": w}, jax.NamedSharding(mesh, jax.P("data")))
    >>> tx = kopt.functional.adam(1e-3)
    >>> state = jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)
    >>> state = jax.device_put(state, state_shardings(state, params))
    >>> state.m.to_tree()["w"].sharding.spec  # Adam's m of w, split like w
    P('data',)
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    owner = {tuple(path): p for path, p in flat}
    replicated = _replicated_sharding([getattr(p, "sharding", None) for _, p in flat])

    def lookup(path, shape):
        """The sharding of the param whose path is the longest suffix of `path`."""
        for k in range(len(path) + 1):
            p = owner.get(path[k:])
            if p is not None and tuple(np.shape(p)) == tuple(shape):
                return getattr(p, "sharding", None) or replicated
        return replicated

    def assign(path, x):
        if isinstance(x, Quantized):   # int8 state: its blocks split like the param
            return _quantized_sharding(x, lookup(tuple(path), x.shape))
        return lookup(tuple(path), np.shape(x))

    is_transform = isinstance(tx_or_state, Transform) or (
        callable(getattr(tx_or_state, "init", None)) and callable(getattr(tx_or_state, "update", None)))
    state = jax.eval_shape(tx_or_state.init, params) if is_transform else tx_or_state
    # A `Packed` slot's entries sit at the params' key paths under its `tree` child; its
    # bucket (path `.bucket`) matches no param and is replicated.
    return jax.tree_util.tree_map_with_path(assign, state,
                                            is_leaf=lambda x: isinstance(x, Quantized))


def _quantized_sharding(q: Quantized, param_sharding: Sharding) -> Quantized:
    """The shardings of a quantised slot's codes and scales (a `Quantized` of them): its
    blocks split over the mesh axes its param is split over (`block_spec`)."""
    if not isinstance(param_sharding, NamedSharding):
        return Quantized(param_sharding, param_sharding, q.shape, q.signed)
    spec = block_spec(param_sharding, q.codes.shape[0])
    mesh = param_sharding.mesh
    return Quantized(NamedSharding(mesh, P(*spec, None)), NamedSharding(mesh, spec),
                     q.shape, q.signed)


# ------------------------------------------------------------------ ZeRO-1
def _is_explicit(mesh: Mesh) -> bool:
    return _EXPLICIT is not None and _EXPLICIT in getattr(mesh, "axis_types", ())


def split_spec(shape: tuple[int, ...], axis: str, axis_size: int) -> P:
    """`P` splitting the largest dimension of `shape` divisible by `axis_size` over `axis`.

    The first such dimension wins a tie; with none (scalars, small or odd shapes) the
    leaf is replicated, `P()`.
    """
    candidates = [d for d, n in enumerate(shape) if n >= axis_size and n % axis_size == 0]
    if not candidates:
        return P()
    d = max(candidates, key=lambda d: (shape[d], -d))
    return P(*([None] * d), axis)


def shard_state(tx: Transform, mesh: Mesh, axis: str = "data") -> Transform:
    """Split `tx`'s state over the mesh axis `axis` while the params stay replicated (ZeRO-1).

    Each state leaf is placed with a `NamedSharding` that splits its largest dimension
    divisible by `mesh.shape[axis]` over `axis` (see `split_spec`); scalars and leaves with
    no divisible dimension are replicated. `init` places the state so (eagerly or under
    jit), and `update` constrains the new state to the same shardings and the updates to
    the params' sharding (replicated on a mesh with `Auto` axes, the params' own on one
    with `Explicit` axes). Under `jax.jit`, XLA then slices each device's part of the
    replicated gradients, runs the rule on that part only, and all-gathers the updates:
    optimizer-state memory and update compute fall by `mesh.shape[axis]`, for one
    all-gather of the updates per step. The numbers are those of `tx` unsharded.

    The state is `tx`'s own state (same structure and fields), so `iteration_count`,
    `set_learning_rate` and checkpoints work unchanged.

    Args:
      tx: any transform (kopt's or optax's).
      mesh: the `jax.sharding.Mesh` the params are replicated over.
      axis: the name of the data-parallel mesh axis to split the state over.
        Default "data".

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> tx = kopt.functional.sharding.shard_state(kopt.functional.adam(1e-3), mesh)
      >>> params = {"w": jnp.ones((1024, 128)), "b": jnp.ones(128)}
      >>> with jax.set_mesh(mesh):
      ...     state = jax.jit(tx.init)(params)  # m and v split over the "data" axis
      >>> [leaf.sharding.spec for leaf in jax.tree.leaves(state.m)]  # b's bucket, then w
      [P('data',), P('data', None)]

    Reference: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models" (2020), stage 1 (optimizer state partitioning).
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"shard_state needs a jax.sharding.Mesh. Received: mesh={mesh!r}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"`axis` must name an axis of the mesh {tuple(mesh.axis_names)}. Received: axis={axis!r}"
        )
    size = mesh.shape[axis]
    explicit = _is_explicit(mesh)

    def state_sharding(x):
        return NamedSharding(mesh, split_spec(tuple(np.shape(x)), axis, size))

    def place(x, sharding):
        if explicit:   # with Explicit axes, shardings are types: change them with reshard
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    def place_state(state):
        return jax.tree.map(lambda x: place(x, state_sharding(x)), state)

    def update_sharding(p):
        # With Auto axes, a traced param's sharding is unknown: ZeRO-1 params are replicated.
        spec = jax.typeof(p).sharding.spec if explicit and p is not None else P()
        return NamedSharding(mesh, spec)

    def init_fn(params):
        return place_state(tx.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        u_leaves, u_def = jax.tree.flatten(updates, is_leaf=_is_none)
        p_leaves = u_def.flatten_up_to(params) if params is not None else [None] * len(u_leaves)
        targets = u_def.unflatten(
            [None if u is None else update_sharding(p) for u, p in zip(u_leaves, p_leaves)])
        if explicit:
            # Run the update with the mesh's axes in Auto mode, so that XLA may slice and
            # gather (explicit sharding rejects reshaping a split bucket, for example).
            run = jax.sharding.auto_axes(
                lambda u, s, p: call_update(tx, u, s, p, extra_args),
                out_sharding=(targets, jax.tree.map(state_sharding, state)))
            return run(updates, state, params)
        updates, state = call_update(tx, updates, state, params, extra_args)
        return jax.tree.map(place, updates, targets), place_state(state)

    return Transform(init_fn, update_fn)


# ------------------------------------------------------------------ reading a bucket
Pieces = tuple[tuple[int, int, tuple[int, ...]], ...]


def _cut(bucket: jax.Array, pieces: Pieces) -> list[jax.Array]:
    """The `(offset, size, shape)` pieces of a flat bucket, each reshaped. A bucket split
    over `Explicit` mesh axes (ZeRO-1) is gathered first (one all-gather: its leaves
    are small), since JAX cannot type a slice of a split dimension."""
    if explicit_axes(bucket):
        bucket = jax.sharding.reshard(bucket, jax.typeof(bucket).sharding.update(spec=P()))
    return [bucket[o:o + n].reshape(shape) for o, n, shape in pieces]


@functools.lru_cache(maxsize=64)
def _cutter(pieces: Pieces, out_sharding: Sharding | None):
    if out_sharding is None:
        return jax.jit(functools.partial(_cut, pieces=pieces))
    return jax.jit(functools.partial(_cut, pieces=pieces), out_shardings=out_sharding)


def unpack_bucket(bucket: jax.Array, pieces: Pieces) -> list[jax.Array]:
    """Every leaf of one flat bucket (`Packed.to_leaves`): the `(offset, size, shape)`
    pieces of `bucket`, in one computation.

    Under jit they are slices. Outside it, a bucket that `shard_state` split over the
    devices (ZeRO-1) is read by one jitted program that gathers it once and returns every
    leaf replicated on its mesh, rather than by one eager slice per leaf: with several
    processes each of those is a collective of its own, and runs of many small eager
    collectives hung on CPU with gloo (see docs/multihost.md). With `Explicit` mesh
    axes, where a slice of a split bucket cannot be typed, it is gathered first.
    """
    pieces = tuple((int(o), int(n), tuple(shape)) for o, n, shape in pieces)
    if not isinstance(bucket, jax.Array) or isinstance(bucket, jax.core.Tracer):
        return _cut(bucket, pieces)
    sharding = bucket.sharding
    if isinstance(sharding, NamedSharding):
        return _cutter(pieces, NamedSharding(sharding.mesh, P()))(bucket)
    return _cutter(pieces, None)(bucket)


# ------------------------------------------------------------------ per-device steps
def _varying_axes(x) -> frozenset:
    """The mapped axes `x` varies over, as JAX tracks them inside `shard_map`."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)   # current JAX
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))      # earlier JAX


def aggregate_gradients(axis_name: str | tuple[str, ...], op: str = "sum") -> Transform:
    r"""Sum or average the per-device gradients over the mapped axis `axis_name`.

    For steps written per device with `jax.shard_map` (or `jax.pmap`), where each device
    differentiates the loss of its own part of the batch. Put it first in a `chain`; with
    `K` devices along the axis and `g_k` device `k`'s gradient:

    .. math::
        g \leftarrow \sum_{k=1}^{K} g_k \quad(\text{op}=\text{"sum"}), \qquad
        g \leftarrow \frac{1}{K}\sum_{k=1}^{K} g_k \quad(\text{op}=\text{"mean"})

    "sum" is what tf.keras's `apply_gradients(..., experimental_aggregate_gradients=True)`
    (and Keras 3's TensorFlow backend, always) does across replicas, each replica's loss
    dividing by the global batch size; "mean" suits a loss that averages over each
    device's own rows. kopt's stateful facade accepts that argument and ignores it: its
    step is one `jax.jit` over global arrays, where XLA inserts the reduction.

    Inside `shard_map` with `check_vma=True` (the default), JAX's autodiff has already
    summed the gradient of a replicated (`P()`) param over the axis: that gradient is
    invariant over the axis, and it is taken as the sum (for "mean", divided by `K`).
    Gradients that vary over the axis (under `check_vma=False`, `pmap`, or for params
    passed in split) are reduced with `psum`/`pmean`. So the result is the same in every
    mode. If the loss itself is already reduced over the devices, the gradients are final:
    leave this transform out. Under plain `jax.jit` with sharded inputs, XLA inserts the
    reduction itself and no transform is needed.

    Args:
      axis_name: the mapped axis name (or a tuple of names) to reduce over.
      op: "sum" or "mean". Default "sum".

    Example:
      >>> import kopt
      >>> from kopt.functional.sharding import aggregate_gradients
      >>> tx = kopt.functional.chain(aggregate_gradients("data", "mean"),
      ...                            kopt.functional.adam(1e-3))
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"`op` must be 'sum' or 'mean'. Received: op={op!r}")
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            "`axis_name` must be a mapped axis name or a tuple of them. "
            f"Received: axis_name={axis_name!r}"
        )
    reduce = jax.lax.psum if op == "sum" else jax.lax.pmean

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        try:   # the axes along which JAX tracks what varies (shard_map with check_vma)
            tracked = [n for n in names if n in _varying_axes(jax.lax.axis_index(n))]
        except NameError as e:
            raise ValueError(
                f"aggregate_gradients({axis_name!r}) runs inside jax.shard_map or jax.pmap "
                f"over the axis {axis_name!r}; it is not bound here.") from e

        def aggregate(g):
            summed = [n for n in tracked if n not in _varying_axes(g)]   # by autodiff
            rest = tuple(n for n in names if n not in summed)
            if rest:
                g = reduce(g, rest)
            if op == "mean" and summed:
                g = g / int(np.prod([jax.lax.axis_size(n) for n in summed]))
            return g

        return jax.tree.map(lambda g: None if g is None else aggregate(g), updates,
                            is_leaf=_is_none), state

    return Transform(init_fn, update_fn)
