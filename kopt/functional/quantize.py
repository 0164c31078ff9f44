r"""Low-precision optimizer state: block-wise 8-bit quantisation and stochastic rounding.

Two storage formats for the per-parameter state of the elementwise optimizers (see the
`state_dtype` argument of `kopt.functional.elementwise.elementwise_transform`).

**int8: block-wise quantisation** after Dettmers et al. (2021). A state array is
flattened, padded with zeros to a whole number of blocks of `BLOCK_SIZE` (2048) elements
and viewed as `(nblocks, BLOCK_SIZE)`. Each block keeps one float32 scale, its absolute
maximum `absmax`, and each element an 8-bit code into a non-linear map of [-1, 1]
(signed) or [0, 1] (unsigned); the element's value is `map[code] * absmax`.

- **signed** (first moments, momenta): codes `-127..127` (int8; -128 is not used),
  :math:`\mathrm{map}[c] = \operatorname{sign}(c)\,(|c|/127)^4`;
- **unsigned** (second moments, accumulators: the slots a `Rule` lists as
  `nonnegative`): codes `0..255` (uint8), :math:`\mathrm{map}[c] = (c/255)^4`: the sign
  bit buys twice the resolution.

Like the paper's dynamic map, this map is dense near zero and spends its codes on
relative rather than absolute precision: neighbouring values differ by about `4/|c|` of
their size, so an element at 1/10 of its block's maximum keeps a relative resolution of
6% (signed; the dynamic tree map has 14% there) and elements down to
:math:`127^{-4} \approx 4\cdot10^{-9}` (signed) or :math:`255^{-4} \approx 2\cdot10^{-10}`
(unsigned) of the maximum stay non-zero (dynamic tree: :math:`10^{-6}`, :math:`10^{-7}`).
Near the maximum it is coarser (3.1% between the top codes, against 1.4%). The map is
not the paper's dynamic tree because decoding it takes four multiplications instead of
a table look-up or a chain of comparisons, and the compiled step decodes every slot
several times (below): with the dynamic tree map an int8 Adam step took about 4x as long
as a float32 one on CPU, with this one about 2x. `quantization_map(signed)` gives the
map as a table.

Each element is encoded as one of the two map values around it (so its error is at most
the gap between them, times `absmax`; the block maximum, zero and +-1 are exact): the
nearest one (`Quantized.quantize`), or, in the optimizer step, the upper one with
probability `(a - lower) / (upper - lower)`, which makes the stored value unbiased.
Stochastic rounding is what keeps a slowly moving average such as Adam's `v`
(`beta_2 = 0.999`) right: its increments are far below the map's resolution, and
round-to-nearest drops them, so that `v` stalled at about 2/3 of its float32 value in
our tests and training drifted.

The compiled step never writes a float32 copy of a quantised slot: each consumer of the
new state (the per-block maximum, the new codes, the update) recomputes it from the
codes and the gradient, and XLA fuses each into one elementwise loop over the blocks
(`blockwise_step`). Its only temporaries are copies of the old codes (1 byte per slot
element) that XLA keeps while the new ones are written over them.

**bfloat16 with stochastic rounding.** The state is stored in bfloat16 and updated in
float32; the new float32 value `x` is written back as one of its two bfloat16
neighbours, the upper one with probability equal to `x`'s distance from the lower one
over their gap, so the stored value is unbiased, `E[round(x)] = x`, and increments far
below a bfloat16 ulp (`(1 - beta_2) * g**2` against `v`, say) still move the state on
average.

**On a mesh.** A quantised slot's blocks (codes and scales) are split over the mesh
axes its param is split over (`block_spec`), so model parallelism divides int8 state
like float32 state. With `Explicit` mesh axes (`jax.make_mesh`'s default) the flat and
block views of a split param are reshapes that JAX cannot type, so `blockwise_step`
changes views with those axes in `Auto` mode (`in_auto_axes`) and states each result's
layout; `Quantized.full(..., like=param)` lays new blocks out the same way.

The random numbers of both come from a counter-based hash of (element index, step,
seed, slot) (`rounding_key`, `_random_bits`): reproducible, the same on every backend,
and a few integer operations per element, far cheaper on CPU than `jax.random`.

Reference: Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization" (ICLR 2022, arXiv:2110.02861).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.shard_alike import shard_alike
from jax.sharding import PartitionSpec as P

__all__ = [
    "BLOCK_SIZE", "MIN_QUANTIZED_SIZE", "STATE_DTYPES", "Quantized", "quantization_map", "encode",
    "decode", "blockwise_step", "stochastic_round", "rounding_key", "validate_state_dtype",
    "block_spec", "explicit_axes", "in_auto_axes",
]

BLOCK_SIZE = 2048
"""Elements per quantisation block, each with its own float32 scale (as in the paper)."""

MIN_QUANTIZED_SIZE = 2048
"""Default smallest leaf (in elements) whose state is quantised; smaller leaves (biases,
norms) keep float32 state, as the paper keeps small tensors at full precision."""

STATE_DTYPES = ("float32", "bfloat16", "int8")
"""The `state_dtype` values the elementwise optimizers accept (besides None)."""


def validate_state_dtype(state_dtype, min_quantized_size=MIN_QUANTIZED_SIZE) -> str | None:
    """The canonical name of `state_dtype` (None, 'float32', 'bfloat16' or 'int8').

    Dtype objects (`jnp.bfloat16`, `np.int8`) are accepted too. Raises ValueError naming
    the argument otherwise.
    """
    if isinstance(min_quantized_size, bool) or not isinstance(min_quantized_size, int) \
            or min_quantized_size < 1:
        raise ValueError("`min_quantized_size` must be an int >= 1. "
                         f"Received: min_quantized_size={min_quantized_size!r}")
    if state_dtype is None:
        return None
    try:
        name = jnp.dtype(state_dtype).name
    except TypeError:
        name = None
    if name not in STATE_DTYPES:
        raise ValueError(
            f"`state_dtype` must be None or one of {list(STATE_DTYPES)}. "
            f"Received: state_dtype={state_dtype!r}"
        )
    return name


# --------------------------------------------------------------------------- the map
def _top(signed: bool) -> int:
    return 127 if signed else 255


def quantization_map(signed: bool = True) -> np.ndarray:
    """The map as a float32 table, in code order: codes `-127..127` (signed) or `0..255`
    (unsigned). `decode(codes)` equals `table[codes + 127]` (signed) or `table[codes]`
    exactly."""
    top = _top(signed)
    x = np.arange(0, top + 1, dtype=np.float32) * np.float32(1.0 / top)
    pos = (x * x) * x * x
    return np.concatenate([-pos[:0:-1], pos]) if signed else pos


def decode(codes: jax.Array, signed: bool) -> jax.Array:
    """Map values (float32, in [-1, 1]) of int8 (signed) or uint8 (unsigned) codes."""
    x = codes.astype(jnp.float32) * np.float32(1.0 / _top(signed))
    return (x * x) * x * (jnp.abs(x) if signed else x)


def encode(x: jax.Array, inv_absmax: jax.Array, signed: bool, key: jax.Array | None = None,
           offset: int = 0) -> jax.Array:
    """The code (int8 signed, uint8 unsigned) of `a = x * inv_absmax`, one of the two map
    values around `a`: the nearest, or, with a `key` (from `rounding_key`), the upper one
    with probability `(a - lower) / (upper - lower)`, so that the decoded value is `a` on
    average (stochastic rounding; the random numbers hash the flat index plus `offset`).

    `a` should lie in [-1, 1]; larger magnitudes get the largest code. With
    `signed=False`, negative values get code 0.
    """
    top = np.float32(_top(signed))
    a = (jnp.abs(x) if signed else jnp.maximum(x, 0.0)) * inv_absmax
    c = jnp.minimum(jnp.floor(jnp.sqrt(jnp.sqrt(a)) * top), top - 1)
    lo = c * np.float32(1.0 / top)      # the map values of c and c + 1, as `decode` has them
    hi = (c + 1.0) * np.float32(1.0 / top)
    lo = (lo * lo) * lo * lo
    hi = (hi * hi) * hi * hi
    t = 0.5 if key is None else _uniform(x.shape, key, offset)
    c = c + ((a - lo) > t * (hi - lo)).astype(jnp.float32)
    if signed:
        return jnp.where(x < 0, -c, c).astype(jnp.int8)
    return c.astype(jnp.uint8)


# --------------------------------------------------------------------------- sharding
# Mesh axis types (Auto / Explicit) are recent in JAX; without them every axis is Auto.
_EXPLICIT = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)


def explicit_axes(x) -> tuple[str, ...]:
    """The `Explicit` mesh axes of `x`'s type (a traced or concrete array): where its
    sharding is part of its type and JAX asks for the output sharding of any operation
    that is ambiguous on split dimensions (a reshape, a split contraction). Empty with
    `Auto` axes, or without a mesh."""
    if _EXPLICIT is None:
        return ()
    try:
        mesh = jax.typeof(x).sharding.mesh
    except (AttributeError, TypeError):   # not a JAX value, or no sharding in its type
        return ()
    types = getattr(mesh, "axis_types", ())
    return tuple(n for n, t in zip(getattr(mesh, "axis_names", ()), types) if t == _EXPLICIT)


def in_auto_axes(fn: Callable, out_sharding, *args):
    """`fn(*args)`, computed with the mesh's `Explicit` axes switched to `Auto`, so that
    XLA chooses the intermediate shardings (of reshapes of split arrays, of contractions
    of split dimensions), its outputs laid out as `out_sharding` (a pytree of
    `PartitionSpec`s like `fn`'s outputs)."""
    return jax.sharding.auto_axes(lambda *a: fn(*a), out_sharding=out_sharding)(*args)


def _spec_axes(spec) -> tuple[str, ...]:
    """The mesh axes a `PartitionSpec` splits over, in order."""
    out = []
    for entry in spec:
        out.extend(entry if isinstance(entry, tuple) else () if entry is None else (entry,))
    return tuple(out)


def block_spec(param_sharding, nblocks: int) -> P:
    """The `PartitionSpec` of the `(nblocks, ...)` blocks (codes, `absmax`) of a quantised
    slot of a param laid out as `param_sharding` (a `NamedSharding`, or None).

    The blocks are split over every mesh axis the param is split over, so each device
    stores `1/k` of the state bytes where the param is split `k` ways, as the float32
    slots would be; replicated (`P()`) where the param is, or where `nblocks` is not a
    multiple of `k` (a small leaf). When the param is split along its first dimension and
    each part is a whole number of blocks, each device's blocks are its own part's
    state; otherwise XLA moves the blocks each step, which is correct but costs
    communication."""
    spec = getattr(param_sharding, "spec", None)
    mesh = getattr(param_sharding, "mesh", None)
    if spec is None or mesh is None:
        return P()
    axes = _spec_axes(spec)
    k = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))
    if not axes or nblocks % k:
        return P()
    return P(axes if len(axes) > 1 else axes[0])


# --------------------------------------------------------------------------- Quantized
class Quantized:
    """A float32 array stored block-wise in 8 bits: the int8-state form of one slot leaf.

    Children: `codes`, int8 (signed map) or uint8 (unsigned map), shape
    `(nblocks, block_size)`; `absmax`, float32 `(nblocks,)`, each block's scale. Aux data:
    `shape`, the array's shape, and `signed`. The value is
    `decode(codes) * absmax[:, None]`, flattened, its first `prod(shape)` elements
    reshaped to `shape` (the tail of the last block is padding).
    """

    __slots__ = ("codes", "absmax", "shape", "signed")

    def __init__(self, codes, absmax, shape, signed: bool):
        self.codes = codes
        self.absmax = absmax
        self.shape = tuple(shape)
        self.signed = bool(signed)

    @staticmethod
    def num_blocks(shape, block_size: int = BLOCK_SIZE) -> int:
        return max(1, -(-int(np.prod(shape, dtype=np.int64)) // block_size))

    @classmethod
    def full(cls, shape, fill: float = 0.0, signed: bool = True,
             block_size: int = BLOCK_SIZE, like=None) -> Quantized:
        """Every element `fill` (exact: it is the blocks' maximum).

        `like`: the param (an array, traced or not). Where its type carries `Explicit`
        mesh axes, the blocks are laid out along its sharding (`block_spec`); otherwise
        they are made like any new array (placed later, e.g. by `state_shardings`).
        """
        nb = cls.num_blocks(shape, block_size)
        top = _top(signed)
        code = 0 if fill == 0 else (top if fill > 0 or not signed else -top)
        if fill < 0 and not signed:
            raise ValueError(f"An unsigned quantised slot cannot hold {fill!r}.")
        dtype = jnp.int8 if signed else jnp.uint8
        codes = jnp.full((nb, block_size), code, dtype)
        absmax = jnp.full((nb,), abs(fill), jnp.float32)
        if like is not None and explicit_axes(like):
            spec = block_spec(jax.typeof(like).sharding, nb)
            codes = jax.sharding.reshard(codes, P(*spec, None))
            absmax = jax.sharding.reshard(absmax, spec)
        return cls(codes, absmax, shape, signed)

    @classmethod
    def quantize(cls, x, signed: bool = True, block_size: int = BLOCK_SIZE,
                 key: jax.Array | None = None) -> Quantized:
        """Quantise the array `x`: to the nearest map value, or stochastically with a
        `key` (see `encode`)."""
        x = jnp.asarray(x)
        blocks = to_blocks(x, cls.num_blocks(x.shape, block_size), block_size)
        codes, absmax = _requantize([blocks], [signed], None if key is None else [key])[0]
        return cls(codes, absmax, x.shape, signed)

    def blocks(self) -> jax.Array:
        """The float32 values as `(nblocks, block_size)`, padding included."""
        return decode(self.codes, self.signed) * self.absmax[:, None]

    def dequantize(self) -> jax.Array:
        """The float32 value, shaped `self.shape`."""
        size = int(np.prod(self.shape, dtype=np.int64))
        return self.blocks().reshape(-1)[:size].reshape(self.shape)

    def __repr__(self):
        kind = "signed" if self.signed else "unsigned"
        return f"Quantized(shape={self.shape}, {kind}, blocks={getattr(self.codes, 'shape', '?')})"


jax.tree_util.register_pytree_node(
    Quantized,
    lambda q: ((q.codes, q.absmax), (q.shape, q.signed)),
    lambda aux, children: Quantized(children[0], children[1], *aux),
)


def to_blocks(x: jax.Array, nblocks: int, block_size: int = BLOCK_SIZE) -> jax.Array:
    """`x` as float32 `(nblocks, block_size)`, zero-padded at the end."""
    flat = jnp.ravel(x).astype(jnp.float32)
    pad = nblocks * block_size - flat.shape[0]
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return flat.reshape(nblocks, block_size)


def _requantize(values: list[jax.Array], signed: list[bool], keys: list | None = None,
                offset: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    """`(codes, absmax)` of each `(nblocks, block_size)` float32 array (`encode` with
    `keys[k]` and `offset`, or to nearest without `keys`).

    The block maxima come out of one variadic reduction (the max and the min of every
    array), which XLA fuses with the elementwise computation that produces the arrays,
    so they are never written out. A plain max-reduction would be handed to a library
    kernel on XLA:CPU that needs its input in memory.
    """
    zero = jnp.zeros((), jnp.float32)
    operands = [v for v in values for _ in (0, 1)]

    def combine(a, b):
        return tuple(lax.max(x, y) if k % 2 == 0 else lax.min(x, y)
                     for k, (x, y) in enumerate(zip(a, b)))

    extremes = lax.reduce(tuple(operands), (zero,) * len(operands), combine, (1,))
    out = []
    for k, (v, s) in enumerate(zip(values, signed)):
        hi, lo = extremes[2 * k], extremes[2 * k + 1]
        m = jnp.maximum(hi, -lo) if s else hi       # the unsigned map clips below at 0
        inv = jnp.where(m > 0, 1.0 / jnp.where(m > 0, m, 1.0), 0.0)
        out.append((encode(v, inv[:, None], s, None if keys is None else keys[k], offset), m))
    return out


def blockwise_step(step: Callable, g: jax.Array, slots: dict[str, Quantized], param=None,
                   keys: dict[str, jax.Array] | None = None):
    """Run an elementwise `step` on quantised state; `keys` (per slot, from
    `rounding_key`) make the new codes stochastically rounded (else to nearest).

    `step(g, values, param) -> (delta, new_values)` is called on float32 arrays: the
    gradient and param and the decoded slots, in two views that XLA fuses separately:

    - flat, `(size,)`, for `delta` (returned shaped like `g`);
    - blocks, `(nblocks, block_size)`, for the new slots, quantised again: the whole
      blocks as a reshape of the flat arrays, and a partial last block, zero-padded, in a
      call of its own (padding the whole array would be written out). The padding is
      state of phantom elements with zero gradient and param, whose updates are dropped.

    A slot given as a plain array (one that a `Rule` keeps in full precision) is read
    and returned as a float32 array shaped like `g`, from the flat view.

    With `Explicit` mesh axes (the default of `jax.make_mesh`), the views of a split
    param are reshapes whose sharding JAX cannot infer: each change of view runs with
    the axes in `Auto` mode (`in_auto_axes`) and gives its result an explicit layout,
    split like `g` where the sizes allow (`block_spec`): the flat views and the blocks
    over `g`'s mesh axes, the delta like `g`. `step` itself runs in the caller's mode.
    The new blocks come out laid out as `Quantized.full(..., like=param)` makes them.
    """
    first = next(q for q in slots.values() if isinstance(q, Quantized))
    nb, bs = first.codes.shape
    size = int(np.prod(first.shape, dtype=np.int64))
    full = size // bs
    names = [n for n, q in slots.items() if isinstance(q, Quantized)]
    sharding = jax.typeof(g).sharding if explicit_axes(g) else None

    def spec(rows, *rest):
        """The layout of an array of `rows` rows (blocks, or flat elements); None: any."""
        return None if sharding is None else P(*block_spec(sharding, rows), *rest)

    def move(fn, out_spec, *args):
        return fn(*args) if sharding is None else in_auto_axes(fn, out_spec, *args)

    def flat(x):
        return move(lambda x: jnp.ravel(x).astype(jnp.float32), spec(size), x)

    plain = {n: flat(q) for n, q in slots.items() if n not in names}
    g_flat = flat(g)
    p_flat = None if param is None else flat(param)

    def flat_values(q):
        def cut(c, m):
            return c.reshape(-1)[:size], jnp.broadcast_to(m[:, None], c.shape).reshape(-1)[:size]
        codes, scale = move(cut, (spec(size), spec(size)), q.codes, q.absmax)
        return decode(codes, q.signed) * scale

    delta, new_flat = step(g_flat, {n: plain[n] if n in plain else flat_values(q)
                                    for n, q in slots.items()}, p_flat)

    def new_blocks(rows, lo, hi):
        """Requantised new slots of blocks `rows`, which hold flat elements `lo:hi`."""
        n_rows = rows.stop - rows.start
        row_spec = spec(n_rows, None)

        def view(flat):
            def cut(x):
                x = x[lo:hi]
                if hi - lo < n_rows * bs:
                    x = jnp.pad(x, (0, n_rows * bs - (hi - lo)))
                return x.reshape(-1, bs)
            return move(cut, row_spec, flat)

        values = {}
        for n in names:
            codes, scale = move(lambda c, m: (c[rows], m[rows, None]), (row_spec, row_spec),
                                slots[n].codes, slots[n].absmax)
            values[n] = decode(codes, slots[n].signed) * scale
        values.update({n: view(x) for n, x in plain.items()})
        _, new = step(view(g_flat), values, None if p_flat is None else view(p_flat))
        signs = [slots[n].signed for n in names]
        return move(lambda v, k: _requantize(v, signs, k, lo),
                    [(row_spec, spec(n_rows))] * len(names),
                    [new[n].astype(jnp.float32) for n in names],
                    None if keys is None else [keys[n] for n in names])

    pieces = []
    if full:
        pieces.append(new_blocks(slice(0, full), 0, full * bs))
    if full < nb:
        pieces.append(new_blocks(slice(full, nb), full * bs, size))
    packed = pieces[0] if len(pieces) == 1 else move(
        lambda a, b: [(jnp.concatenate([c1, c2]), jnp.concatenate([m1, m2]))
                      for (c1, m1), (c2, m2) in zip(a, b)],
        [(spec(nb, None), spec(nb))] * len(names), *pieces)
    new_slots = {n: Quantized(c, m, slots[n].shape, slots[n].signed)
                 for n, (c, m) in zip(names, packed)}
    g_spec = None if sharding is None else sharding.spec

    def shaped(x):
        return move(lambda x: x.reshape(g.shape), g_spec, x)

    new_slots.update({n: shaped(new_flat[n]) for n in plain})
    delta = shaped(delta)
    if sharding is None:
        # With Auto axes, keep each slot's blocks where they are (as `state_shardings`
        # placed them) and the rest like `g`, whatever XLA would choose for new arrays.
        delta = shard_alike(delta, g)[0]
        for n in slots:
            new_slots[n] = jax.tree.map(lambda new, old: shard_alike(new, old)[0],
                                        new_slots[n], slots[n])
    return delta, new_slots


# --------------------------------------------------------------------------- bfloat16
def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons)."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def rounding_key(seed: jax.Array, step: jax.Array, salt: int) -> jax.Array:
    """The uint32 key of one (seed, step, slot/leaf `salt`) rounding stream."""
    seed = jnp.asarray(seed).astype(jnp.uint32)
    step = jnp.asarray(step).astype(jnp.uint32)
    k = _mix32(seed ^ _mix32(step * np.uint32(0x9E3779B9) + np.uint32(salt & 0xFFFFFFFF)))
    return _mix32(k + np.uint32((salt >> 32) & 0xFFFFFFFF))


def _random_bits(shape, key: jax.Array, offset: int = 0) -> jax.Array:
    """uint32 random bits per element: `(i ^ key) * 0x9E3779B1` for flat index `i + offset`.

    The high bits are uniform over the keys for a fixed element, i.e. over steps and
    seeds, which is what unbiased rounding needs; within one step neighbouring elements
    get a low-discrepancy sequence. Cheap: three integer operations per element.
    """
    idx = np.uint32(offset & 0xFFFFFFFF) + sum(
        lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(int(np.prod(shape[d + 1:])))
        for d in range(len(shape))) if shape else jnp.full((), offset, jnp.uint32)
    return (idx ^ key) * np.uint32(0x9E3779B1)


def _uniform(shape, key: jax.Array, offset: int = 0) -> jax.Array:
    """float32 uniform on [0, 1), 24 random bits per element (see `_random_bits`)."""
    return (_random_bits(shape, key, offset) >> 8).astype(jnp.float32) * np.float32(2.0 ** -24)


def stochastic_round(x: jax.Array, key: jax.Array) -> jax.Array:
    """`x` rounded to bfloat16, up or down at random with probabilities that make it
    unbiased; NaN stays NaN and infinities stay infinite. `key` (uint32, from
    `rounding_key`) chooses the random bits (`_random_bits`)."""
    x32 = x.astype(jnp.float32)
    noise = _random_bits(x32.shape, key) >> 16
    bits = lax.bitcast_convert_type(x32, jnp.uint32)
    # Adding uniform noise below bfloat16's last mantissa bit, then truncating, rounds the
    # magnitude up with probability (dropped bits) / 2**16: unbiased.
    upper = ((bits + noise) >> 16).astype(jnp.uint16)
    rounded = lax.bitcast_convert_type(upper, jnp.bfloat16)
    return jnp.where(jnp.isnan(x32), x32.astype(jnp.bfloat16), rounded)
