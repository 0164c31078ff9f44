"""Bucketed optimizer state: small leaves share a flat buffer, large leaves stay per leaf.

An optimizer step is memory-bound, and on trees with many small leaves the cost is not the
bytes but one kernel and one output buffer per leaf. So the per-parameter state of the
elementwise optimizers (Adam's `m` and `v`, say) is stored as a `Packed` value:

- every leaf with at most `bucket_threshold` elements goes into one flat buffer (the
  *bucket*), at an offset given by its place in the tree;
- every larger leaf keeps its own array, shaped like the param.

The step concatenates the small gradients, runs the rule once on the bucket and slices the
updates back out, so a thousand small leaves cost about as much as one large one.
Concatenating *large* leaves would cost an extra copy per step, so they are never bucketed.

**Tree structure.** A `Packed` has two pytree children and no aux data:

- `bucket`: the flat bucket array when bucketing is on (with no small leaf it holds one
  unused element: orbax cannot save empty arrays), None when it is off;
- `tree`: a pytree shaped like the params, whose entry for each param leaf is its state
  array, a `Quantized` (int8 state), or a `Stub` where the leaf has no array of its own
  (its state is in the bucket, or it is empty).

So the state's structure depends only on the transform's options and on what the params
tree itself fixes (its containers, and each small leaf's shape, kept in its `Stub`): an
eager `init`, a jitted one and `jax.eval_shape(tx.init, params)` give the same structure,
an orbax checkpoint restores into any of them, and `optax.tree.map_params` maps `fn` over
the `tree` child (params-shaped), leaving the bucket to `transform_non_params` (with extra params-shaped trees, as for partition
specs, pass `is_leaf=lambda x: isinstance(x, Stub)` when bucketing is on: `fn` then
sees each bucketed entry's `Stub`). The
`Layout` (offsets, shapes, dtypes) is a pure function of that structure and the arrays'
shapes (`Packed.layout`), derived where it is needed: at trace time of a step, not per
call. Users never see buckets: updates are pytrees like params, and `Packed.to_tree()` /
`Packed.leaf(i)` give per-param views.

The choice is automatic (`bucket_threshold=None`): leaves of up to `AUTO_BUCKET_SIZE`
elements are bucketed on every backend; see `DEFAULT_BUCKET_THRESHOLD` for the
measurements behind it. `bucket_threshold=0`
turns bucketing off everywhere, and any positive size turns it on.

A leaf whose *type* says it is split across devices (a param on a mesh with `Explicit`
axes, eager or traced) is never bucketed, whatever its size: its state keeps the param's
shape and sharding. (Packed into a replicated bucket it would be all-gathered every step,
and under explicit sharding its flattening is rejected.) On a mesh with `Auto` axes the
type does not carry the sharding, so a small split leaf is bucketed as if replicated,
whether `init` runs eagerly or under jit (the two must agree, or a checkpoint made from
one would not restore into the other): set `bucket_threshold=0`, or use `Explicit` axes,
to keep every leaf's state sharded like it.

Only float32 state (or the `state_dtype` asked for) is bucketed; a float64 param under
`jax_enable_x64` keeps float64 state of its own.

Low-precision state (`plan(..., state_dtype=...)`): with 'bfloat16' (or 'float32') every
leaf's state has that dtype, bucketed as above. With 'int8', each leaf of at least
`min_quantized_size` elements is stored block-wise quantised, as a
`kopt.functional.quantize.Quantized` entry (layout dtype 'int8', never bucketed); smaller
leaves keep full-precision state, bucketed as above.

An entry of zero size (a zero-size param, or Muon's empty second moment on its Muon
branch) is stored as a `Stub` too, not as an array, and reads back as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.quantize import MIN_QUANTIZED_SIZE, Quantized
from kopt.functional.sharding import unpack_bucket

__all__ = [
    "DEFAULT_BUCKET_THRESHOLD", "AUTO_BUCKET_SIZE", "Layout", "Packed", "Stub", "plan",
    "resolve_threshold", "state_dtype_for",
]

DEFAULT_BUCKET_THRESHOLD = None
"""`None` means automatic: bucket leaves of up to `AUTO_BUCKET_SIZE` elements, on every
backend.

Measured with `benchmarks/step.py` (one process per row):
- H100: bucketing made a 1000-leaf Adam step 5.2 ms instead of 52 ms and compile in 6.5 s
  instead of 17 s; ResNet-50-like Adam 1.84 ms instead of 5.97 ms.
- XLA:CPU: with each leaf's slice out of a bucket at a constant offset, every leaf got a
  kernel of its own (tens of ms of LLVM each), and a 1000-leaf Adam step took 3x optax's
  compile time. The offsets are now runtime values on CPU (see
  `kopt.functional.rule_runner`), so same-shaped leaves share one kernel; see
  `benchmarks/README.md` for the figures.
"""

AUTO_BUCKET_SIZE = 1 << 16
"""The threshold automatic bucketing uses (65,536 elements)."""

# `Layout.place` kinds (first entry of a leaf's place).
BUCKETED, OWN, EMPTY = 0, -1, -2


def resolve_threshold(bucket_threshold: int | None) -> int:
    """The threshold in force: `bucket_threshold`, or the automatic choice for `None`."""
    return AUTO_BUCKET_SIZE if bucket_threshold is None else bucket_threshold


def state_dtype_for(dtype) -> np.dtype:
    """The param's dtype, with a float32 minimum for 16-bit and non-float params."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float32)


class Stub:
    """The entry of a `Packed` slot's tree for a leaf with no array of its own.

    An empty pytree node: no children, the `Stub` itself is its static data (`shape`,
    `dtype`, `bucketed`). `bucketed`: the leaf's state is its slice of the bucket;
    otherwise the entry has zero size and reads as `zeros(shape, dtype)`. Immutable;
    unflattening returns the same object, so a step's output costs no construction and
    jit's cache check short-cuts on identity.
    """

    __slots__ = ("shape", "dtype", "bucketed", "_hash")

    def __init__(self, shape, dtype: str, bucketed: bool):
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        object.__setattr__(self, "dtype", str(dtype))
        object.__setattr__(self, "bucketed", bool(bucketed))
        object.__setattr__(self, "_hash", hash((self.shape, self.dtype, self.bucketed)))

    def __setattr__(self, name, value):
        raise AttributeError("Stub is immutable.")

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        return (isinstance(other, Stub) and self._hash == other._hash
                and (self.shape, self.dtype, self.bucketed)
                == (other.shape, other.dtype, other.bucketed))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return Stub, (self.shape, self.dtype, self.bucketed)

    def __repr__(self):
        where = "in the bucket" if self.bucketed else "empty"
        return f"Stub(shape={self.shape}, dtype={self.dtype!r}, {where})"


jax.tree_util.register_pytree_node(Stub, lambda s: ((), s), lambda s, _: s)


def _is_entry(x) -> bool:
    return isinstance(x, (Stub, Quantized))


@dataclass(frozen=True, eq=False)
class Layout:
    """Where each leaf's state lives: a pure function of a `Packed`'s structure and shapes.

    `place[i]` is `(kind, offset, size)`: kind `0` for a leaf in the bucket (at `offset`),
    `-1` for a leaf with its own array, `-2` for an empty entry. `shapes[i]` and
    `dtypes[i]` are the entry's (the param's for the elementwise optimizers; 'int8' for a
    quantised entry). `buckets` is `()` or `((dtype, size),)`.
    """

    treedef: Any                               # PyTreeDef of params
    shapes: tuple[tuple[int, ...], ...]        # per leaf
    dtypes: tuple[str, ...]                    # state dtype per leaf
    place: tuple[tuple[int, int, int], ...]    # per leaf: (kind, offset, size)
    buckets: tuple[tuple[str, int], ...]       # () or ((dtype, size),)

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

    def members(self, b: int = 0) -> list[int]:
        """The leaves in the bucket, in offset order."""
        return [i for i, (k, _, _) in enumerate(self.place) if k == BUCKETED]

    def large(self) -> list[int]:
        """The leaves with an array of their own."""
        return [i for i, (k, _, _) in enumerate(self.place) if k == OWN]

    def unbucketed(self) -> list[int]:
        """The leaves not in the bucket (own arrays and empty entries)."""
        return [i for i, (k, _, _) in enumerate(self.place) if k != BUCKETED]

    def stub(self, i: int) -> Stub:
        return Stub(self.shapes[i], self.dtypes[i], self.place[i][0] == BUCKETED)


def _is_split(leaf) -> bool:
    """Whether `leaf`'s type says it is sharded across devices (Explicit mesh axes).

    Only the type is read, never a concrete array's sharding, so that an eager and a
    traced `init` decide alike."""
    try:
        spec = jax.typeof(leaf).sharding.spec
    except (AttributeError, TypeError):
        return False
    return any(s is not None for s in spec)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def plan(params, bucket_threshold: int | None = DEFAULT_BUCKET_THRESHOLD,
         state_dtype=None, min_quantized_size: int = MIN_QUANTIZED_SIZE) -> Layout:
    """Choose the layout for `params` (their shapes, dtypes and, where their type says,
    shardings).

    `state_dtype`: None for `state_dtype_for(param dtype)`, a dtype for every leaf, or
    'int8' for block-wise quantised state on leaves of at least `min_quantized_size`
    elements (layout dtype 'int8', not bucketed) and `state_dtype_for` on the others.
    With bucketing on there is always one bucket, of the state dtype (float32 unless
    `state_dtype` is 'bfloat16'), at least one element long.
    """
    leaves, treedef = jax.tree.flatten(params)
    threshold = resolve_threshold(bucket_threshold)
    quantize = state_dtype is not None and jnp.dtype(state_dtype) == jnp.int8
    explicit = state_dtype is not None and not quantize
    bucket_dtype = None
    if threshold:
        bucket_dtype = (jnp.dtype(state_dtype) if explicit else np.dtype(np.float32)).name
    shapes, dtypes, place = [], [], []
    total = 0
    for leaf in leaves:
        shape = tuple(np.shape(leaf))
        size = _size(shape)
        shapes.append(shape)
        if quantize and size >= min_quantized_size:
            dtypes.append("int8")
            place.append((OWN, 0, size))
            continue
        dt = jnp.dtype(state_dtype) if explicit else state_dtype_for(leaf.dtype)
        dtypes.append(dt.name)
        if size == 0:
            place.append((EMPTY, 0, 0))
        elif size <= threshold and dt.name == bucket_dtype and not _is_split(leaf):
            place.append((BUCKETED, total, size))
            total += size
        else:
            place.append((OWN, 0, size))
    buckets = ((bucket_dtype, max(total, 1)),) if threshold else ()
    return Layout(treedef, tuple(shapes), tuple(dtypes), tuple(place), buckets)


def _derive_layout(bucket, tree) -> Layout:
    """The `Layout` of a `Packed` with children `bucket` and `tree`."""
    entries, treedef = jax.tree.flatten(tree, is_leaf=_is_entry)
    shapes, dtypes, place = [], [], []
    offset = 0
    for e in entries:
        if isinstance(e, Stub):
            shape, dtype = tuple(e.shape), e.dtype
            size = _size(shape)
            if e.bucketed:
                place.append((BUCKETED, offset, size))
                offset += size
            else:
                place.append((EMPTY, 0, 0))
        elif isinstance(e, Quantized):
            shape, dtype = e.shape, "int8"
            place.append((OWN, 0, _size(shape)))
        else:
            # Any leaf: arrays, and what a tree map made of them (shardings, specs).
            shape = tuple(getattr(e, "shape", ()))
            dtype = getattr(e, "dtype", None)
            dtype = None if dtype is None else np.dtype(dtype).name
            place.append((OWN, 0, _size(shape)))
        shapes.append(shape)
        dtypes.append(dtype)
    buckets = () if bucket is None else ((np.dtype(bucket.dtype).name, int(np.shape(bucket)[0])),)
    return Layout(treedef, tuple(shapes), tuple(dtypes), tuple(place), buckets)


class Packed:
    """One per-parameter state slot (e.g. Adam's `m`) in bucketed form.

    Pytree children: `bucket` (the flat array of the small leaves' state, or None with
    bucketing off) and `tree` (params-shaped: per leaf its array, a `Quantized`, or a
    `Stub`). No aux data; `layout` is derived from the children when first read.
    """

    __slots__ = ("bucket", "tree", "_layout", "_entries")

    def __init__(self, bucket, tree, layout: Layout | None = None):
        self.bucket = bucket
        self.tree = tree
        self._layout = layout
        self._entries = None

    def _flat(self) -> list:
        """The tree's entries in leaf order (arrays, `Quantized`s and `Stub`s), cached."""
        if self._entries is None:
            self._entries = jax.tree.leaves(self.tree, is_leaf=_is_entry)
        return self._entries

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = _derive_layout(self.bucket, self.tree)
        return self._layout

    @property
    def buckets(self) -> tuple:
        """`(bucket,)`, or `()` with bucketing off."""
        return () if self.bucket is None else (self.bucket,)

    @property
    def leaves(self) -> tuple:
        """Per param leaf: its own array or `Quantized`, or None (in the bucket, or empty)."""
        return tuple(None if isinstance(e, Stub) else e for e in self._flat())

    @classmethod
    def from_parts(cls, layout: Layout, buckets, leaves) -> Packed:
        """From `buckets` (`[]` or `[bucket]`) and one entry per leaf (None where the
        layout has no array of its own)."""
        entries = [layout.stub(i) if layout.place[i][0] != OWN else x
                   for i, x in enumerate(leaves)]
        bucket = buckets[0] if layout.buckets else None
        return cls(bucket, layout.treedef.unflatten(entries), layout)

    @classmethod
    def full(cls, layout: Layout, fill: float = 0.0, like=None, signed: bool = True) -> Packed:
        """A slot filled with `fill`. Large leaves follow `like`'s leaves (and shardings).

        Quantised leaves (layout dtype 'int8') use the signed or unsigned map (`signed`).
        """
        like_leaves = layout.treedef.flatten_up_to(like) if like is not None else None
        buckets = [jnp.full((n,), fill, dtype) for dtype, n in layout.buckets]
        leaves = []
        for i, (kind, _, _) in enumerate(layout.place):
            if kind != OWN:
                leaves.append(None)
            elif layout.dtypes[i] == "int8":
                # (kopt/functional/quantize.py: blocks laid out along the param's
                # sharding under Explicit mesh axes; issue #15)
                leaves.append(Quantized.full(layout.shapes[i], fill, signed, like=None
                                             if like_leaves is None else like_leaves[i]))
            elif like_leaves is not None:
                leaves.append(jnp.full_like(like_leaves[i], fill, dtype=layout.dtypes[i]))
            else:
                leaves.append(jnp.full(layout.shapes[i], fill, layout.dtypes[i]))
        return cls.from_parts(layout, buckets, leaves)

    @classmethod
    def from_leaves(cls, layout: Layout, leaves) -> Packed:
        """Build from one array per param leaf (in flatten order); a quantised leaf
        (layout dtype 'int8') takes a `Quantized`. Entries the layout keeps empty are
        ignored."""
        leaves = list(leaves)
        buckets = []
        for dtype, n in layout.buckets:
            members = layout.members()
            parts = [jnp.ravel(jnp.asarray(leaves[i], dtype)) for i in members]
            used = sum(layout.place[i][2] for i in members)
            if used < n:   # the unused element of a bucket with no member
                parts.append(jnp.zeros((n - used,), dtype))
            buckets.append(jnp.concatenate(parts) if len(parts) > 1 else parts[0])
        own = []
        for i, (kind, _, _) in enumerate(layout.place):
            if kind != OWN:
                own.append(None)
            elif layout.dtypes[i] == "int8":
                if not isinstance(leaves[i], Quantized):
                    raise TypeError(f"Leaf {i} of this slot is quantised; expected a Quantized, "
                                    f"received {type(leaves[i]).__name__}.")
                own.append(leaves[i])
            else:
                own.append(jnp.asarray(leaves[i], layout.dtypes[i]))
        return cls.from_parts(layout, buckets, own)

    def leaf(self, i: int) -> jax.Array | Quantized:
        """The state of param leaf `i`, shaped like the entry (the param, for the
        elementwise optimizers; a `Quantized` where the state is quantised:
        `.dequantize()` gives the float32 values)."""
        layout = self.layout
        kind, off, size = layout.place[i]
        if kind == BUCKETED:
            return self.bucket[off:off + size].reshape(layout.shapes[i])
        if kind == EMPTY:
            return jnp.zeros(layout.shapes[i], layout.dtypes[i])
        return self._flat()[i]

    def to_leaves(self) -> list[jax.Array]:
        layout = self.layout
        entries = self._flat()
        # (issue #15: every bucketed leaf in one computation, also when ZeRO-1 split the
        # bucket under Explicit axes; see kopt.functional.sharding.unpack_bucket)
        inside = [i for i in range(layout.num_leaves) if layout.place[i][0] == BUCKETED]
        cut = dict(zip(inside, unpack_bucket(self.bucket, [
            (*layout.place[i][1:], layout.shapes[i]) for i in inside]))) if inside else {}
        return [cut[i] if i in cut else self.leaf(i) if layout.place[i][0] != OWN
                else entries[i] for i in range(layout.num_leaves)]

    def to_tree(self):
        """The state as a pytree shaped like params."""
        return self.layout.treedef.unflatten(self.to_leaves())

    def __repr__(self):
        layout = self.layout
        size = [n for _, n in layout.buckets]
        return (f"Packed({layout.num_leaves} leaves: {len(layout.members())} in "
                f"{len(layout.buckets)} bucket(s) {size}, {len(layout.large())} per-leaf)")


def _flatten_with_keys(p: Packed):
    return (((jax.tree_util.GetAttrKey("bucket"), p.bucket),
             (jax.tree_util.GetAttrKey("tree"), p.tree)), None)


jax.tree_util.register_pytree_with_keys(
    Packed,
    _flatten_with_keys,
    lambda _, children: Packed(*children),
    lambda p: ((p.bucket, p.tree), None),
)
