"""Low-precision optimizer state: `state_dtype='bfloat16'` (stochastic rounding) and
`state_dtype='int8'` (block-wise quantisation).

- the 8-bit map and the per-block error bound of quantising, against float64 NumPy;
- stochastic rounding is unbiased, per element over many draws and over many elements;
- each optimizer's low-precision state tracks its float32 state;
- layouts, bytes per parameter, the small-leaf policy, the cross-cutting options;
- the compiled step's temporaries (no float32 copy of quantised state, no copy at all of
  bfloat16 state);
- exact checkpoints: `get_weights`/`set_weights` and continuing bit for bit;
- a small MLP trained with 8-bit and bfloat16 state ends within 2% of float32 state;
- bad arguments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kopt.functional.adagrad import adagrad
from kopt.functional.adam import adam
from kopt.functional.adamw import adamw
from kopt.functional.base import apply_updates
from kopt.functional.buckets import Packed
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.lion import lion
from kopt.functional.quantize import (
    BLOCK_SIZE,
    Quantized,
    decode,
    quantization_map,
    rounding_key,
    stochastic_round,
)
from kopt.functional.rmsprop import rmsprop
from kopt.functional.sgd import sgd
from kopt.stateful.adagrad import Adagrad
from kopt.stateful.adam import Adam
from kopt.stateful.adamw import AdamW
from kopt.stateful.lion import Lion
from kopt.stateful.rmsprop import RMSprop
from kopt.stateful.sgd import SGD
from kopt.stateful.variable import Variable

# --------------------------------------------------------------------------------------
# The 8-bit map and block-wise quantisation


@pytest.mark.parametrize("signed", [True, False])
def test_map_is_monotone_and_decode_matches_it(signed):
    table = quantization_map(signed)
    top = 127 if signed else 255
    assert table.dtype == np.float32 and len(table) == (2 * top + 1 if signed else top + 1)
    assert np.all(np.diff(table) > 0)
    assert table[-1] == 1.0 and (table[0] == -1.0 if signed else table[0] == 0.0)
    codes = np.arange(-top, top + 1) if signed else np.arange(top + 1)
    got = np.asarray(decode(jnp.asarray(codes, jnp.int8 if signed else jnp.uint8), signed))
    np.testing.assert_array_equal(got, table)
    # relative precision: neighbours differ by about 4 / |code| of their size
    pos = table[table > 0].astype(np.float64)
    k = np.arange(1, len(pos))
    np.testing.assert_array_less(np.diff(pos) / pos[1:], 4.0 / k + 1e-6)


def _blocks(rng, n, signed):
    """Values whose blocks have very different scales, with outliers and exact zeros."""
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 3, size=n // BLOCK_SIZE + 1).repeat(BLOCK_SIZE)[:n]
    x[rng.integers(0, n, 20)] *= 1e4          # outliers
    x[rng.integers(0, n, 20)] = 0.0
    x[: BLOCK_SIZE // 2] *= 1e-30             # a block near underflow
    return (x if signed else np.abs(x)).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_quantisation_error_is_bounded_per_block(signed):
    rng = np.random.default_rng(0)
    n = 5 * BLOCK_SIZE + 123                  # a partial last block
    x = _blocks(rng, n, signed).reshape(43, 241)
    q = Quantized.quantize(jnp.asarray(x), signed)
    assert q.codes.shape == (6, BLOCK_SIZE) and q.absmax.shape == (6,)
    assert q.codes.dtype == (jnp.int8 if signed else jnp.uint8) and q.dequantize().shape == x.shape
    flat = np.zeros(6 * BLOCK_SIZE, np.float64)
    flat[:n] = x.ravel()
    blocks = flat.reshape(6, BLOCK_SIZE)
    absmax = np.abs(blocks).max(axis=1)
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax.astype(np.float32))   # exact scale
    got = np.asarray(q.blocks(), np.float64)
    # Each value is one of the two map values around it (times the block's scale): the
    # error is at most the gap between them.
    table = quantization_map(signed).astype(np.float64)
    a = np.where(absmax[:, None] > 0, blocks / np.where(absmax > 0, absmax, 1)[:, None], 0.0)
    hi = np.clip(np.searchsorted(table, a), 1, len(table) - 1)
    gap = (table[hi] - table[hi - 1]) * absmax[:, None]
    err = np.abs(got - blocks)
    assert np.all(err <= gap * (1 + 1e-5) + 1e-30 * absmax[:, None]), (err - gap).max()
    # ... and within 1.6% (+ one code of 127**-4) of the block maximum for every element
    top = 127 if signed else 255
    assert np.all(err <= (0.016 + top ** -4.0) * absmax[:, None] + 1e-45)
    # zeros and block maxima are exact
    assert np.all(got[blocks == 0] == 0)
    for b in range(6):
        j = np.argmax(np.abs(blocks[b]))
        assert got[b, j] == blocks[b, j].astype(np.float32)
    full = Quantized.full((3000,), 0.1, signed)
    np.testing.assert_array_equal(np.asarray(full.dequantize()), np.full(3000, 0.1, np.float32))


# --------------------------------------------------------------------------------------
# Stochastic rounding


def _bf16_neighbours(x):
    """The bfloat16 values around float32 `x`: truncated towards zero, and one ulp out."""
    bits = x.view(np.uint32)
    low = bits & np.uint32(0xFFFF0000)
    return low.view(np.float32), (low + np.uint32(0x10000)).view(np.float32), low == bits


def test_stochastic_rounding_is_unbiased():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(61) * 10.0 ** rng.integers(-30, 30, 61),
                        1.0 + np.arange(3) * 2.0 ** -10, [-3.0e-3, 0.0]]).astype(np.float32)
    lo, hi, exact = _bf16_neighbours(x)
    draws = 4000
    keys = jax.vmap(lambda t: rounding_key(jnp.uint32(7), t, 3))(jnp.arange(draws))
    rounded = jax.jit(jax.vmap(stochastic_round, in_axes=(None, 0)))(jnp.asarray(x), keys)
    assert rounded.dtype == jnp.bfloat16
    r = np.asarray(rounded.astype(jnp.float32))
    assert np.all((r == lo) | (r == hi))                  # always a neighbour
    assert np.all(r[:, exact] == x[exact])                # exact values stay
    # The mean over draws is x: per element, within 4.5 standard errors.
    lo, hi, x = lo.astype(np.float64), hi.astype(np.float64), x.astype(np.float64)
    p = np.where(exact, 0.0, (x - lo) / np.where(exact, 1.0, hi - lo))
    se = np.abs(hi - lo) * np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(r.mean(axis=0, dtype=np.float64) - x) <= 4.5 * se + 1e-3 * np.abs(hi - lo))
    # Over the elements of one draw too: 2**16 copies of a value a quarter-ulp above 1.
    y = jnp.full((1 << 16,), 1.0 + 2.0 ** -10, jnp.float32)
    mean = float(jnp.mean(stochastic_round(y, rounding_key(0, 1, 0)).astype(jnp.float32)))
    assert abs(mean - (1.0 + 2.0 ** -10)) < 2.0 ** -7 * 0.01
    # NaN and infinities survive.
    special = jnp.asarray([np.nan, np.inf, -np.inf], jnp.float32)
    out = np.asarray(stochastic_round(special, rounding_key(0, 0, 0)).astype(jnp.float32))
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_quantisation_is_unbiased(signed):
    """With a key, each value is encoded as one of the two map values around it, the upper
    one with the probability that makes the mean exact."""
    rng = np.random.default_rng(6)
    x = np.concatenate([[1.0], rng.uniform(-1, 1, 40) * 10.0 ** rng.uniform(-8, 0, 40), [0.0, 1e-3]])
    x = (x if signed else np.abs(x)).astype(np.float32)
    draws = 3000
    keys = jax.vmap(lambda t: rounding_key(jnp.uint32(1), t, 0))(jnp.arange(draws))
    quantize = jax.jit(jax.vmap(lambda k: Quantized.quantize(jnp.asarray(x), signed, key=k).dequantize()))
    r = np.asarray(quantize(keys), np.float64)
    table = quantization_map(signed).astype(np.float64)
    hi_i = np.clip(np.searchsorted(table, x, side="right"), 1, len(table) - 1)
    lo, hi = table[hi_i - 1], table[hi_i]
    exact = np.isin(x, table.astype(np.float32))
    assert np.all((np.abs(r - lo) < 1e-6 * np.abs(lo) + 1e-45) | (np.abs(r - hi) < 1e-6 * np.abs(hi)) | exact)
    assert np.all(r[:, exact] == x[exact])
    p = np.clip((x - lo) / (hi - lo), 0, 1)
    se = (hi - lo) * np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(r.mean(axis=0) - x) <= 4.5 * se + 1e-4 * (hi - lo))


def test_bfloat16_state_accumulates_increments_below_an_ulp():
    """Adagrad's accumulator grows by 1e-4 a step against 1.0: round-to-nearest bfloat16
    would never move it; stochastic rounding tracks float32."""
    params = {"w": jnp.zeros((4096,))}
    grads = {"w": jnp.full((4096,), 1e-2)}
    final = {}
    for sd in (None, "bfloat16"):
        tx = adagrad(0.1, initial_accumulator_value=1.0, state_dtype=sd)

        def run(state, _, tx=tx):
            return tx.update(grads, state, params)[1], None

        state = jax.lax.scan(run, tx.init(params), None, length=500)[0]
        final[sd] = np.asarray(state.accumulator.leaf(0).astype(jnp.float32), np.float64)
    assert np.allclose(final[None], 1.05, rtol=1e-5)
    assert abs(final["bfloat16"].mean() - 1.05) < 2e-4


# --------------------------------------------------------------------------------------
# Every optimizer's low-precision state tracks its float32 state

PARAMS = {"k": jnp.asarray(np.random.default_rng(2).standard_normal((48, 64)), jnp.float32),
          "b": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32)}
OPTIMIZERS = {
    "sgd": lambda **k: sgd(0.1, momentum=0.9, nesterov=True, **k),
    "adam": lambda **k: adam(0.01, amsgrad=True, **k),
    "adamw": lambda **k: adamw(0.01, weight_decay=0.1, **k),
    "lion": lambda **k: lion(0.003, **k),
    "rmsprop": lambda **k: rmsprop(0.01, momentum=0.5, centered=True, **k),
    "adagrad": lambda **k: adagrad(0.1, **k),
}


def _values(x):
    """A slot leaf as float64 (dequantised where quantised)."""
    return np.asarray(x.dequantize() if isinstance(x, Quantized) else x.astype(jnp.float32), np.float64)


def _train(tx, steps=6):
    def loss(p):
        return jnp.sum(jnp.sin(p["k"]) * p["k"]) + jnp.sum((p["b"] - 0.3) ** 2)

    def run(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (apply_updates(p, u), s), None

    return jax.jit(lambda p: jax.lax.scan(run, (p, tx.init(p)), None, length=steps)[0])(PARAMS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_low_precision_state_tracks_float32(name):
    p32, s32 = _train(OPTIMIZERS[name]())
    slots = [f for f in s32._fields if isinstance(getattr(s32, f), Packed)]
    # Measured worst cases: state 1.2% (bfloat16) and 4.6% (int8) of the slot's largest
    # element, params 0.006 and 0.02 (SGD; a step moves them by up to ~0.1).
    for sd, tol, atol in (("bfloat16", 0.025, 0.015), ("int8", 0.08, 0.05)):
        p, s = _train(OPTIMIZERS[name](state_dtype=sd))
        for f in slots:
            for i in range(2):
                ref, got = _values(getattr(s32, f).leaf(i)), _values(getattr(s, f).leaf(i))
                assert np.max(np.abs(got - ref)) <= tol * np.max(np.abs(ref)) + 1e-12, (sd, f, i)
        for key in p32:
            np.testing.assert_allclose(p[key], p32[key], atol=atol)


# --------------------------------------------------------------------------------------
# Layout, bytes, small leaves, cross-cutting options


def test_layouts_and_bytes_per_parameter():
    params = {"big": jnp.zeros((100, 300)), "half": jnp.zeros((8,), jnp.bfloat16), "small": jnp.zeros((300,))}
    default = adam().init(params)
    assert default.seed is None and default.m.leaf(1).dtype == jnp.float32   # unchanged
    s = adam(state_dtype="bfloat16").init(params)
    assert s.seed.dtype == jnp.uint32 and s.seed.shape == ()
    assert all(s.m.leaf(i).dtype == jnp.bfloat16 for i in range(3))
    assert adam(state_dtype="float32").init(params).m.leaf(1).dtype == jnp.float32
    s = adam(state_dtype="int8", amsgrad=True).init(params)
    big_m, big_v, big_vhat = s.m.leaf(0), s.v.leaf(0), s.vhat.leaf(0)
    assert isinstance(big_m, Quantized) and big_m.signed and big_m.codes.dtype == jnp.int8
    assert not big_v.signed and big_v.codes.dtype == jnp.uint8 and not big_vhat.signed
    assert big_m.codes.shape == (15, BLOCK_SIZE) and big_m.absmax.shape == (15,)
    assert s.m.leaf(1).dtype == jnp.float32 and s.m.leaf(2).dtype == jnp.float32
    assert s.seed.dtype == jnp.uint32   # int8 rounds stochastically too
    n = 30000
    state_bytes = sum(x.nbytes for x in jax.tree.leaves((s.m.leaf(0), s.v.leaf(0))))
    assert state_bytes / n < 2.1
    # the threshold is configurable: now the (300,) leaf is quantised (one padded block) too
    s = adam(state_dtype="int8", min_quantized_size=300).init(params)
    assert isinstance(s.m.leaf(2), Quantized) and not isinstance(s.m.leaf(1), Quantized)
    # Adagrad's accumulator starts at its initial value exactly
    s = adagrad(initial_accumulator_value=0.1, state_dtype="int8").init(params)
    np.testing.assert_array_equal(s.accumulator.leaf(0).dequantize(), np.full((100, 300), 0.1, np.float32))


def test_cross_cutting_options_and_skipped_leaves_under_low_precision():
    params = {"a": jnp.ones((64, 40)), "b": jnp.ones((3,)), "c": jnp.ones((5,))}
    grads = {"a": jnp.full((64, 40), 0.5), "b": jnp.full((3,), 0.5), "c": None}
    for sd in ("bfloat16", "int8"):
        tx = adam(0.1, state_dtype=sd, use_ema=True, gradient_accumulation_steps=2,
                  bucket_threshold=16, clipnorm=1.0, weight_decay=0.01)
        state = tx.init(params)
        assert state.ema.leaf(0).dtype == jnp.float32 and state.accum.leaf(0).dtype == jnp.float32
        step = jax.jit(tx.update)
        before = state
        for _ in range(4):
            updates, state = step(grads, state, params)
            params = apply_updates(params, updates)
        assert int(state.count) == 2 and int(state.micro_step) == 4
        assert jax.tree.structure(state) == jax.tree.structure(before)
        assert [x.dtype for x in jax.tree.leaves(state)] == [x.dtype for x in jax.tree.leaves(before)]
        np.testing.assert_array_equal(_values(state.m.leaf(2)), 0.0)   # "c" never had a gradient
        assert np.all(_values(state.m.leaf(0)) > 0)


def test_bfloat16_runs_are_reproducible_and_seeded():
    tx = adam(1e-2, state_dtype="bfloat16")
    params = {"w": jnp.linspace(0.0, 1.0, 4096)}
    grads = {"w": jnp.linspace(1e-3, 2e-3, 4096)}
    step = jax.jit(tx.update)

    def run(seed):
        state = tx.init(params)._replace(seed=jnp.uint32(seed))
        for _ in range(3):
            _, state = step(grads, state, params)
        return np.asarray(state.v.leaf(0).astype(jnp.float32))

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


# --------------------------------------------------------------------------------------
# The compiled step's temporaries


def _step_temp_bytes(tx, shape):
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
    state = jax.eval_shape(tx.init, params)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply_updates(p, u), s

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("shape", [(512, BLOCK_SIZE), (1000, 999)])
def test_low_precision_step_keeps_no_float32_copy_of_the_state(shape):
    """An int8 step's temporaries hold at most the old codes (1 byte per slot element,
    and the new ones of a partial last block), never a float32 copy (4 bytes per element)
    of a slot, for Adam (two slots) and SGD (one). bfloat16 and float32 state are
    updated in place."""
    n = int(np.prod(shape))
    if jax.default_backend() != "cpu":
        pytest.skip("the temporaries are checked on XLA:CPU")
    assert _step_temp_bytes(adam(state_dtype="int8"), shape) < 3 * n
    assert _step_temp_bytes(sgd(momentum=0.9, state_dtype="int8"), shape) < 3 * n
    assert _step_temp_bytes(adam(state_dtype="bfloat16"), shape) < n
    assert _step_temp_bytes(adam(), shape) < n


# --------------------------------------------------------------------------------------
# Exact checkpoints


def _vars():
    rng = np.random.default_rng(3)
    return [Variable(jnp.asarray(rng.standard_normal((64, 64)), jnp.float32), name="kernel"),
            Variable(jnp.asarray(rng.standard_normal((64,)), jnp.float32), name="bias")]


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return [jnp.asarray(rng.standard_normal((64, 64)), jnp.float32),
            jnp.asarray(rng.standard_normal((64,)), jnp.float32)]


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_checkpoint_round_trip_and_exact_resume(state_dtype):
    opt = Adam(0.01, state_dtype=state_dtype)
    assert opt.get_config()["state_dtype"] == state_dtype
    assert Adam.from_config(opt.get_config()).get_config() == opt.get_config()
    variables = _vars()
    for t in range(3):
        opt.apply_gradients(zip(_grads(t), variables))
    weights = opt.get_weights()
    if state_dtype == "int8":   # iterations, seed, m: kernel codes, kernel scales, bias; v: same
        assert [w.dtype.name for w in weights] == ["int32", "uint32", "int8", "float32", "float32",
                                                   "uint8", "float32", "float32"]
        assert [w.shape for w in weights[2:5]] == [(2, BLOCK_SIZE), (2,), (64,)]
    else:                       # iterations, seed, m of each variable, v of each variable
        assert [w.dtype.name for w in weights] == ["int32", "uint32"] + ["bfloat16"] * 4
    assert len(opt.variables) == len(weights) + 1   # Keras's list adds the learning rate

    resumed_vars = [Variable(v.value, name=v.name) for v in variables]
    resumed = Adam.from_config(opt.get_config())
    resumed.build(resumed_vars)
    resumed.set_weights(weights)
    for a, b in zip(resumed.get_weights(), weights):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for t in range(3, 6):   # both continue bit for bit
        opt.apply_gradients(zip(_grads(t), variables))
        resumed.apply_gradients(zip(_grads(t), resumed_vars))
    for a, b in zip(variables + opt.get_weights(), resumed_vars + resumed.get_weights()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW, Lion, RMSprop, Adagrad])
def test_stateful_classes_take_state_dtype(cls):
    kw = {"momentum": 0.9} if cls in (SGD, RMSprop) else {}
    opt = cls(state_dtype="int8", min_quantized_size=1024, **kw)
    config = opt.get_config()
    assert config["state_dtype"] == "int8" and config["min_quantized_size"] == 1024
    assert cls.from_config(config).get_config() == config
    variables = _vars()
    opt.apply_gradients(zip(_grads(0), variables))
    slots = [f for f in opt.state._fields if isinstance(getattr(opt.state, f), Packed)]
    assert slots and all(isinstance(getattr(opt.state, f).leaf(0), Quantized) for f in slots)
    assert len(opt.get_weights()) == 2 + 3 * len(slots)   # iterations, seed, 3 per slot


def test_set_weights_rejects_bad_quantised_entries_and_changes_nothing():
    opt = SGD(0.1, momentum=0.9, state_dtype="int8")
    variables = _vars()
    opt.apply_gradients(zip(_grads(0), variables))
    weights = opt.get_weights()
    assert len(weights) == 5   # iterations, seed, kernel codes, kernel scales, bias momentum
    with pytest.raises(ValueError, match="expected a list of 5 arrays"):
        opt.set_weights(weights[:4])
    bad = list(weights)
    bad[2] = weights[2].astype(np.int32) + 200
    with pytest.raises(ValueError, match=r"entry 2 \(momentum of variable 'kernel', codes\)"):
        opt.set_weights(bad)
    bad = list(weights)
    bad[3] = np.ones((3,), np.float32)
    with pytest.raises(ValueError, match=r"entry 3 .*block scales.* shape \(3,\), expected \(2,\)"):
        opt.set_weights(bad)
    for a, b in zip(opt.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Convergence on a real small problem


def _mlp_problem():
    """Teacher-student regression: a 3-layer MLP learns a random tanh teacher network."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 32)).astype(np.float32)
    w1, w2 = rng.standard_normal((32, 64)) / np.sqrt(32), rng.standard_normal((64, 8)) / np.sqrt(64)
    y = (np.tanh(x @ w1) @ w2).astype(np.float32)
    sizes = [(32, 128), (128, 128), (128, 8)]   # 4096, 16384, 1024 (+ biases): mostly quantised
    params = []
    for a, b in sizes:
        params.append({"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
                       "b": jnp.zeros((b,), jnp.float32)})
    return params, jnp.asarray(x), jnp.asarray(y)


def _mlp_loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"][None, :])
    out = h @ params[-1]["w"] + params[-1]["b"][None, :]
    return jnp.mean((out - y) ** 2)


def test_convergence_of_a_small_mlp_matches_float32_state():
    params, x, y = _mlp_problem()
    batches = jnp.asarray(np.random.default_rng(5).integers(0, 512, (400, 64)))
    final = {}
    for sd in (None, "bfloat16", "int8"):
        tx = adam(3e-3, state_dtype=sd, min_quantized_size=1024)

        def run(carry, batch, tx=tx):
            p, s = carry
            loss, g = jax.value_and_grad(_mlp_loss)(p, x[batch], y[batch])
            u, s = tx.update(g, s, p)
            return (apply_updates(p, u), s), loss

        train = jax.jit(lambda p, b, run=run, tx=tx: jax.lax.scan(run, (p, tx.init(p)), b))
        (p, _), _ = train(params, batches)
        final[sd] = float(_mlp_loss(p, x, y))
    first = float(_mlp_loss(params, x, y))
    assert final[None] < 0.1 * first   # it did learn
    for sd in ("bfloat16", "int8"):
        assert abs(final[sd] - final[None]) <= 0.02 * final[None], final


# --------------------------------------------------------------------------------------
# Bad arguments


class _State(NamedTuple):
    count: jax.Array
    learning_rate: jax.Array
    m: Packed


@pytest.mark.parametrize("bad", ["float16", "int4", "uint8", 8, "bf16"])
def test_bad_state_dtype_raises(bad):
    with pytest.raises(ValueError, match=r"`state_dtype` must be None or one of .*Received: state_dtype="):
        adam(state_dtype=bad)
    with pytest.raises(ValueError, match="state_dtype"):
        Adam(state_dtype=bad)


def test_bad_low_precision_configurations_raise():
    with pytest.raises(ValueError, match=r"min_quantized_size=0"):
        sgd(momentum=0.9, state_dtype="int8", min_quantized_size=0)
    rule = Rule(slots=("m",), step=lambda g, s, lr, t: (-lr * g, {"m": g}))
    per_leaf = rule._replace(per_leaf=True)
    with pytest.raises(ValueError, match="state_dtype='int8' needs an elementwise rule"):
        elementwise_transform(per_leaf, _State, 0.1, state_dtype="int8")
    elementwise_transform(per_leaf, _State, 0.1, state_dtype="float32")   # fine
    for sd in ("bfloat16", "int8"):
        with pytest.raises(TypeError, match="lacks the field 'seed'"):
            elementwise_transform(rule, _State, 0.1, state_dtype=sd)
    assert jnp.dtype(jnp.bfloat16).name == "bfloat16"
    adam(state_dtype=jnp.bfloat16)   # dtype objects are accepted
