"""Bucketed optimizer state: small leaves share flat buffers, large leaves stay per leaf.

An optimizer step is memory-bound, and on trees with many small leaves the cost is not the
bytes but one kernel and one output buffer per leaf. So the per-parameter state of the
elementwise optimizers (Adam's `m` and `v`, say) is stored as a `Packed` value:

- every leaf with at most `bucket_threshold` elements goes into one flat buffer per state
  dtype (a *bucket*), at an offset chosen once, at `init`;
- every larger leaf keeps its own array, shaped like the param.

The step concatenates the small gradients, runs the rule once per bucket and slices the
updates back out, so a thousand small leaves cost about as much as one large one.
Concatenating *large* leaves would cost an extra copy per step, so they are never bucketed.

The layout is static: it is the pytree aux data of `Packed`, so it needs no params at
update time and jit specialises on it. Users never see buckets: updates are pytrees like
params, and `Packed.to_tree()` / `Packed.leaf(i)` give per-param views.

The choice is automatic (`bucket_threshold=None`): on by default on GPU and TPU, off on
CPU; see `DEFAULT_BUCKET_THRESHOLD` for the measurements behind it. `bucket_threshold=0`
turns bucketing off everywhere, and any positive size turns it on.

A leaf whose sharding is known to split it across devices is never bucketed, whatever its
size: its state keeps the param's shape and sharding. (Packed into a replicated bucket it
would be all-gathered every step, and under explicit sharding its flattening is
rejected.) The sharding is known for a `jax.Array` (an eager `init`) and for a traced
value on a mesh with `Explicit` axes; under jit on a mesh with `Auto` axes it is not, and
such a leaf is bucketed as if replicated.

Low-precision state (`plan(..., state_dtype=...)`): with 'bfloat16' (or 'float32') every
leaf's state has that dtype, bucketed as above. With 'int8', each leaf of at least
`min_quantized_size` elements is stored block-wise quantised, as a
`kopt.functional.quantize.Quantized` in `Packed.leaves` (layout dtype 'int8', never
bucketed); smaller leaves keep full-precision state, bucketed as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.quantize import MIN_QUANTIZED_SIZE, Quantized

__all__ = [
    "DEFAULT_BUCKET_THRESHOLD", "AUTO_BUCKET_SIZE", "Layout", "Packed", "plan", "resolve_threshold",
    "state_dtype_for",
]

DEFAULT_BUCKET_THRESHOLD = None
"""`None` means automatic: bucket leaves of up to `AUTO_BUCKET_SIZE` elements on GPU and
TPU, and bucket nothing on CPU.

Measured with `benchmarks/step.py` (one process per row):
- H100: bucketing made a 1000-leaf Adam step 5.2 ms instead of 52 ms and compile in 6.5 s
  instead of 17 s; ResNet-50-like Adam 1.84 ms instead of 5.97 ms.
- XLA:CPU: each leaf's slice out of a bucket compiles to a kernel of its own (tens of ms
  each), so a 1000-leaf Adam step took 37 s to compile against 12.5 s unbucketed, for a
  step only ~1.6x faster.
"""

AUTO_BUCKET_SIZE = 1 << 16
"""The threshold automatic bucketing uses on accelerators (65,536 elements)."""


def resolve_threshold(bucket_threshold: int | None) -> int:
    """The threshold in force: `bucket_threshold`, or the automatic choice for `None`."""
    if bucket_threshold is not None:
        return bucket_threshold
    return 0 if jax.default_backend() == "cpu" else AUTO_BUCKET_SIZE


def state_dtype_for(dtype) -> np.dtype:
    """The param's dtype, with a float32 minimum for 16-bit and non-float params."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float32)


@dataclass(frozen=True, eq=False)
class Layout:
    """Where each leaf's state lives. Hashable and static.

    It is pytree aux data, so jit hashes and compares it on every call: the hash is
    cached and equality short-cuts on identity.
    """

    treedef: Any                               # PyTreeDef of params
    shapes: tuple[tuple[int, ...], ...]        # per leaf
    dtypes: tuple[str, ...]                    # state dtype per leaf
    place: tuple[tuple[int, int, int], ...]    # per leaf: (bucket or -1, offset, size)
    buckets: tuple[tuple[str, int], ...]       # per bucket: (dtype, total size)

    def _key(self):
        return (self.treedef, self.shapes, self.dtypes, self.place, self.buckets)

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(self._key())
            object.__setattr__(self, "_hash", h)
        return h

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Layout) or hash(self) != hash(other):
            return False
        return self._key() == other._key()

    @property
    def num_leaves(self) -> int:
        return len(self.shapes)

    def members(self, b: int) -> list[int]:
        return [i for i, (bi, _, _) in enumerate(self.place) if bi == b]

    def large(self) -> list[int]:
        return [i for i, (bi, _, _) in enumerate(self.place) if bi < 0]


def _is_split(leaf) -> bool:
    """Whether `leaf` is known to be sharded across devices (not fully replicated)."""
    sharding = getattr(leaf, "sharding", None)   # None for tracers and numpy arrays
    if sharding is not None:
        return not sharding.is_fully_replicated
    try:   # a tracer's type carries its sharding on a mesh with Explicit axes
        spec = jax.typeof(leaf).sharding.spec
    except (AttributeError, TypeError):
        return False
    return any(s is not None for s in spec)


def plan(params, bucket_threshold: int | None = DEFAULT_BUCKET_THRESHOLD,
         state_dtype=None, min_quantized_size: int = MIN_QUANTIZED_SIZE) -> Layout:
    """Choose the layout for `params` (their shapes, dtypes and, where known, shardings).

    `state_dtype`: None for `state_dtype_for(param dtype)`, a dtype for every leaf, or
    'int8' for block-wise quantised state on leaves of at least `min_quantized_size`
    elements (layout dtype 'int8', not bucketed) and `state_dtype_for` on the others.
    """
    leaves, treedef = jax.tree.flatten(params)
    threshold = resolve_threshold(bucket_threshold)
    quantize = state_dtype is not None and jnp.dtype(state_dtype) == jnp.int8
    shapes, dtypes, place = [], [], []
    bucket_of: dict[str, int] = {}
    sizes: list[int] = []
    for leaf in leaves:
        shape = tuple(np.shape(leaf))
        size = int(np.prod(shape, dtype=np.int64))
        shapes.append(shape)
        if quantize and size >= min_quantized_size:
            dtypes.append("int8")
            place.append((-1, 0, size))
            continue
        dt = (jnp.dtype(state_dtype) if state_dtype is not None and not quantize
              else state_dtype_for(leaf.dtype))
        dtypes.append(dt.name)
        if 0 < size <= threshold and not _is_split(leaf):
            b = bucket_of.setdefault(dt.name, len(bucket_of))
            if b == len(sizes):
                sizes.append(0)
            place.append((b, sizes[b], size))
            sizes[b] += size
        else:
            place.append((-1, 0, size))
    buckets = tuple((name, sizes[b]) for name, b in sorted(bucket_of.items(), key=lambda kv: kv[1]))
    return Layout(treedef, tuple(shapes), tuple(dtypes), tuple(place), buckets)


class Packed:
    """One per-parameter state slot (e.g. Adam's `m`) in bucketed form.

    Children: `buckets`, one flat array per bucket, and `leaves`, one array per param leaf
    that is not bucketed (`None` where it is; a `Quantized` where the layout's dtype is
    'int8'). Aux data: the static `Layout`.
    """

    __slots__ = ("buckets", "leaves", "layout")

    def __init__(self, buckets, leaves, layout: Layout):
        self.buckets = tuple(buckets)
        self.leaves = tuple(leaves)
        self.layout = layout

    @classmethod
    def full(cls, layout: Layout, fill: float = 0.0, like=None, signed: bool = True) -> Packed:
        """A slot filled with `fill`. Large leaves follow `like`'s leaves (and shardings).

        Quantised leaves (layout dtype 'int8') use the signed or unsigned map (`signed`).
        """
        like_leaves = layout.treedef.flatten_up_to(like) if like is not None else None
        buckets = [jnp.full((n,), fill, dtype) for dtype, n in layout.buckets]
        leaves = []
        for i, (b, _, _) in enumerate(layout.place):
            if b >= 0:
                leaves.append(None)
            elif layout.dtypes[i] == "int8":
                leaves.append(Quantized.full(layout.shapes[i], fill, signed))
            elif like_leaves is not None:
                leaves.append(jnp.full_like(like_leaves[i], fill, dtype=layout.dtypes[i]))
            else:
                leaves.append(jnp.full(layout.shapes[i], fill, layout.dtypes[i]))
        return cls(buckets, leaves, layout)

    @classmethod
    def from_leaves(cls, layout: Layout, leaves) -> Packed:
        """Build from one array per param leaf (in flatten order); a quantised leaf
        (layout dtype 'int8') takes a `Quantized`."""
        leaves = list(leaves)
        buckets = []
        for b, (dtype, _) in enumerate(layout.buckets):
            parts = [jnp.ravel(jnp.asarray(leaves[i], dtype)) for i in layout.members(b)]
            buckets.append(jnp.concatenate(parts))
        large = []
        for i, (b, _, _) in enumerate(layout.place):
            if b >= 0:
                large.append(None)
            elif layout.dtypes[i] == "int8":
                if not isinstance(leaves[i], Quantized):
                    raise TypeError(f"Leaf {i} of this slot is quantised; expected a Quantized, "
                                    f"received {type(leaves[i]).__name__}.")
                large.append(leaves[i])
            else:
                large.append(jnp.asarray(leaves[i], layout.dtypes[i]))
        return cls(buckets, large, layout)

    def leaf(self, i: int) -> jax.Array | Quantized:
        """The state of param leaf `i`, shaped like the param (a `Quantized` where the
        state is quantised: `.dequantize()` gives the float32 values)."""
        b, off, size = self.layout.place[i]
        if b < 0:
            return self.leaves[i]
        return self.buckets[b][off:off + size].reshape(self.layout.shapes[i])

    def to_leaves(self) -> list[jax.Array]:
        return [self.leaf(i) for i in range(self.layout.num_leaves)]

    def to_tree(self):
        """The state as a pytree shaped like params."""
        return self.layout.treedef.unflatten(self.to_leaves())

    def __repr__(self):
        return (f"Packed({self.layout.num_leaves} leaves: {len(self.buckets)} bucket(s) "
                f"{[n for _, n in self.layout.buckets]}, {len(self.layout.large())} per-leaf)")


jax.tree_util.register_pytree_node(
    Packed,
    lambda p: ((p.buckets, p.leaves), p.layout),
    lambda layout, children: Packed(children[0], children[1], layout),
)
