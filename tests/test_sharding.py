"""Sharding on 8 CPU devices (a 4 x 2 ('data', 'model') mesh), in both of JAX's modes:

- `Auto` mesh axes: shardings live on arrays, XLA propagates them through jit;
- `Explicit` mesh axes (`jax.make_mesh`'s default): shardings are part of the types, under
  `jax.set_mesh(mesh)`.

Checked: the state takes each param's sharding with `init` under jit, with bucketing off
and on; a jitted step keeps every param and state sharding; global-norm clipping across
shards equals the unsharded result; stateful Variables stay sharded and `get_weights`
gathers full arrays; `shard_state` (ZeRO-1) splits the state, keeps params replicated and
computes the unsharded numbers; `aggregate_gradients` inside `jax.shard_map` equals the
single-device full-batch step.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from kopt.functional.adam import adam
from kopt.functional.adamw import adamw
from kopt.functional.base import Transform, apply_updates, chain
from kopt.functional.clipping import clip_by_global_norm
from kopt.functional.lion import lion
from kopt.functional.muon import muon
from kopt.functional.quantize import Quantized
from kopt.functional.sgd import sgd
from kopt.functional.sharding import aggregate_gradients, shard_state, split_spec, state_shardings
from kopt.stateful.adam import Adam
from kopt.stateful.variable import Variable

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")

MODES = ["auto", "explicit"]

# name -> (shape, spec): a large leaf, small sharded leaves, small replicated leaves.
LEAVES = {
    "big": ((16, 8), P("data", "model")),
    "emb": ((3, 8), P(None, "data")),
    "bias": ((6,), P("model")),
    "gain": ((5,), P()),
    "scale": ((), P()),
}
THRESHOLD = 64   # buckets every leaf but "big" unless its sharding rules it out


def _mesh(mode):
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))


def _context(mesh):
    """Explicit axes need the mesh in context for jit; Auto axes do not."""
    if AxisType.Explicit in mesh.axis_types:
        return jax.set_mesh(mesh)
    return contextlib.nullcontext()


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    tree = {
        "dense": {"big": rng.normal(size=LEAVES["big"][0]), "bias": rng.normal(size=LEAVES["bias"][0])},
        "emb": rng.normal(size=LEAVES["emb"][0]),
        "gain": rng.normal(size=LEAVES["gain"][0]),
        "scale": np.asarray(rng.normal()),
    }
    return jax.tree.map(lambda x: x * scale, tree)


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _put(tree, mesh):
    """`tree` (from `_tree`) in float32 on `mesh`, each leaf with its spec in LEAVES."""
    specs = {"dense": {"big": LEAVES["big"][1], "bias": LEAVES["bias"][1]}, "emb": LEAVES["emb"][1],
             "gain": LEAVES["gain"][1], "scale": LEAVES["scale"][1]}
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), _f32(tree), specs)


def _same_sharding(a, b):
    return a.sharding.is_equivalent_to(b.sharding, np.ndim(a))


def _init(tx, params, mesh):
    """`init` under jit: a plain jit with Explicit axes, `state_shardings` with Auto axes."""
    if AxisType.Explicit in mesh.axis_types:
        return jax.jit(tx.init)(params)
    return jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)


def _step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state
    return jax.jit(step)


def _run(tx, params, grads):
    step, state = _step_fn(tx), jax.jit(tx.init)(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _fused(txs):
    """One transform running every transform of the dict `txs` on its own copy of the
    params, so that a test compiles one program for all of them. Its params are a dict
    of param trees, one per name; its gradients are shared."""
    def init_fn(params):
        return {k: tx.init(params[k]) for k, tx in txs.items()}

    def update_fn(grads, state, params):
        out = {k: tx.update(grads, state[k], params[k]) for k, tx in txs.items()}
        return {k: u for k, (u, _) in out.items()}, {k: s for k, (_, s) in out.items()}

    return Transform(init_fn, update_fn)


def _fused_step(txs):
    tx = _fused(txs)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return {k: apply_updates(params[k], updates[k]) for k in txs}, state
    return jax.jit(step)


def _close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)




# ------------------------------------------------------------------ init follows params
@pytest.mark.parametrize("threshold", [0, THRESHOLD])
@pytest.mark.parametrize("mode", MODES)
def test_init_under_jit_takes_param_shardings(mode, threshold):
    mesh = _mesh(mode)
    params = _put(_tree(0), mesh)
    p_leaves = jax.tree.leaves(params)
    tx = adam(0.1, bucket_threshold=threshold)
    with _context(mesh):
        states = {"jit": _init(tx, params, mesh), "eager": tx.init(params)}
    for how, state in states.items():
        # On a mesh with Auto axes the params' types carry no sharding, so a small split
        # leaf may be bucketed (into a replicated bucket), by a traced and an eager init alike.
        blind = mode == "auto"
        for slot in (state.m, state.v):
            for i, p in enumerate(p_leaves):
                b = slot.layout.place[i][0]
                if b < 0:
                    assert _same_sharding(slot.leaves[i], p), (how, i)
                else:   # bucketed: the bucket is replicated, and so is the param
                    assert slot.buckets[b].sharding.is_fully_replicated
                    assert blind or p.sharding.is_fully_replicated, (how, i)
        assert jax.tree.structure(state) == jax.tree.structure(states["jit"]), how
        if threshold and not blind:
            # split leaves are per-leaf; the replicated small ones ("gain", "scale") share a bucket
            assert [b for b, _, _ in state.m.layout.place] == [-1, -1, -1, 0, 0]


def test_state_shardings_follow_params_by_key_path():
    optax = pytest.importorskip("optax")
    mesh = _mesh("auto")
    params = _put(_tree(0), mesh)
    by_name = jax.tree.map(lambda p: p.sharding, params)
    replicated = NamedSharding(mesh, P())

    kopt_tx = chain(clip_by_global_norm(1.0), sgd(0.1, momentum=0.9, bucket_threshold=0))
    sh = state_shardings(kopt_tx, params)
    assert sh[1].momentum.to_tree() == by_name
    assert sh[1].count == replicated and sh[1].learning_rate == replicated

    # optax's states are plain trees shaped like params, here under a mask
    mask = {"dense": {"big": True, "bias": False}, "emb": True, "gain": False, "scale": False}
    optax_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.masked(optax.adam(0.1), mask))
    sh = state_shardings(optax_tx, params)
    adam_state = sh[1].inner_state[0]
    assert adam_state.mu["dense"]["big"] == by_name["dense"]["big"]
    assert adam_state.nu["emb"] == by_name["emb"]
    assert adam_state.count == replicated
    state = jax.jit(optax_tx.init, out_shardings=sh)(params)
    assert _same_sharding(state[1].inner_state[0].mu["dense"]["big"], params["dense"]["big"])


# ------------------------------------------------------------------ the jitted step
def _same_tree_shardings(after, before):
    assert jax.tree.structure(after) == jax.tree.structure(before)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        assert _same_sharding(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_jitted_step_keeps_param_and_state_shardings(mode):
    mesh = _mesh(mode)
    txs = {
        "sgd_momentum": sgd(0.1, momentum=0.9, nesterov=True, bucket_threshold=0),
        "adam": adam(0.1, amsgrad=True, bucket_threshold=0),
        "adamw": adamw(0.1, weight_decay=0.01, bucket_threshold=0),
        "lion": lion(0.01, bucket_threshold=0),
    }
    params = {k: _put(_tree(0), mesh) for k in txs}
    grads = _put(_tree(1), mesh)
    step = _fused_step(txs)
    with _context(mesh):
        state = {k: _init(t, params[k], mesh) for k, t in txs.items()}
        new_params, new_state = step(params, state, grads)
    _same_tree_shardings(new_params, params)
    _same_tree_shardings(new_state, state)


@pytest.mark.skipif(importlib.util.find_spec("kopt.functional.adafactor") is None,
                    reason="kopt.functional.adafactor is not there")
@pytest.mark.parametrize("mode", MODES)
def test_jitted_adafactor_step_keeps_shardings_from_the_first_step(mode):
    from kopt.functional.adafactor import adafactor

    mesh = _mesh(mode)
    tx = adafactor(0.1)
    params, grads = _put(_tree(0), mesh), _put(_tree(1), mesh)
    step = _step_fn(tx)
    with _context(mesh):
        state = _init(tx, params, mesh)
        params_1, state_1 = step(params, state, grads)
        params_2, state_2 = step(params_1, state_1, grads)
    _same_tree_shardings(params_1, params)
    _same_tree_shardings(params_2, params)
    _same_tree_shardings(state_2, state_1)
    # State shaped like its param is sharded like it from the start. The factored moments
    # of a matrix (shapes unlike the param's) are placed by the step, as XLA computes them
    # from sharded gradients, and stay so.
    for x in (state, state_1):
        assert _same_sharding(x.v.to_tree()["dense"]["bias"], params["dense"]["bias"])


@pytest.mark.parametrize("mode", MODES)
def test_bucketed_step_keeps_shardings_without_collectives(mode):
    mesh = _mesh(mode)
    params, grads = _put(_tree(0), mesh), _put(_tree(1), mesh)
    tx = adam(0.1, bucket_threshold=THRESHOLD)
    with _context(mesh):
        state = tx.init(params)
        step = _step_fn(tx)
        new_params, new_state = step(params, state, grads)
        hlo = step.lower(params, state, grads).compile().as_text()
    for after, before in ((new_params, params), (new_state.m.leaves, state.m.leaves),
                          (new_state.v.leaves, state.v.leaves)):
        _same_tree_shardings(after, before)
    # On Auto axes the small split leaves ("bias", "emb") are bucketed, eager init or not
    # (kopt.functional.buckets), so the step may gather them; on Explicit axes they are not.
    if mode == "explicit":
        assert all(b.sharding.is_fully_replicated
                   for b in new_state.m.buckets + new_state.v.buckets)
        # an elementwise step on state sharded like its params moves no data between devices
        assert "all-gather" not in hlo and "collective-permute" not in hlo
    _close(new_params, _run(adam(0.1, bucket_threshold=0), _f32(_tree(0)), [_f32(_tree(1))])[0])


# ------------------------------------------------------------------ global-norm clipping
CLIPPED = {
    "adam": adam(0.1, global_clipnorm=0.5, bucket_threshold=0),
    "chain": chain(clip_by_global_norm(0.5), sgd(0.1, momentum=0.5, bucket_threshold=0)),
}


@functools.cache
def _clipped_unsharded():
    grads = [_f32(_tree(1 + k, scale=10.0)) for k in range(2)]
    norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(grads[0])))
    assert norm > 10 * 0.5   # the clip is active
    params = {k: _f32(_tree(0)) for k in CLIPPED}
    return _run(_fused(CLIPPED), params, grads)


@pytest.mark.parametrize("mode", MODES)
def test_global_clipnorm_across_shards_matches_unsharded(mode):
    mesh = _mesh(mode)
    grads = [_put(_tree(1 + k, scale=10.0), mesh) for k in range(2)]
    params = {k: _put(_tree(0), mesh) for k in CLIPPED}
    step = _fused_step(CLIPPED)
    with _context(mesh):
        state = {k: _init(t, params[k], mesh) for k, t in CLIPPED.items()}
        got = params
        for g in grads:
            got, state = step(got, state, g)
    _close((got, state), _clipped_unsharded())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        assert _same_sharding(a, b)


# ------------------------------------------------------------------ stateful facade
NAMES = ["big", "bias", "emb", "gain", "scale"]


def _flat(tree):   # _tree's leaves in NAMES order
    return [np.float32(a) for a in (tree["dense"]["big"], tree["dense"]["bias"], tree["emb"],
                                    tree["gain"], tree["scale"])]


@functools.cache
def _stateful_unsharded():
    variables = [Variable(a, name=n) for a, n in zip(_flat(_tree(0)), NAMES)]
    opt = Adam(0.05, global_clipnorm=1.0)
    for k in range(2):
        opt.apply_gradients(zip(_flat(_tree(1 + k)), variables))
    return [v.numpy() for v in variables], opt.get_weights()


@contextlib.contextmanager
def _step_compiles():
    """Collect the facade's step compilations (`jax.log_compiles`) inside the block."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling jit(step)"):
                seen.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield seen
    finally:
        logging.getLogger("jax").removeHandler(handler)


@pytest.mark.parametrize("mode", MODES)
def test_stateful_variables_stay_sharded_and_get_weights_gathers(mode):
    mesh = _mesh(mode)

    def put(arrays):
        return [jax.device_put(a, NamedSharding(mesh, LEAVES[n][1])) for a, n in zip(arrays, NAMES)]

    with _context(mesh):
        variables = [Variable(a, name=n) for a, n in zip(put(_flat(_tree(0))), NAMES)]
        before = [v.value.sharding for v in variables]
        # Under Auto axes a small split leaf is bucketed as if replicated (documented in
        # kopt.functional.buckets); bucket_threshold=0 keeps each slot sharded like its
        # variable there. Explicit axes keep split leaves out of the bucket by type.
        opt = Adam(0.05, global_clipnorm=1.0, **({"bucket_threshold": 0} if mode == "auto" else {}))
        opt.build(variables)
        with _step_compiles() as compiles:
            for k in range(2):
                opt.apply_gradients(zip(put(_flat(_tree(1 + k))), variables))
    for v, s in zip(variables, before):
        assert v.value.sharding.is_equivalent_to(s, v.ndim), v.name
        assert not s.is_fully_replicated or v.name in ("gain", "scale")
    for slot in (opt.state.m, opt.state.v):
        for i, v in enumerate(variables):
            assert slot.leaf(i).sharding.is_equivalent_to(v.value.sharding, v.ndim)
    values, weights = _stateful_unsharded()
    got = opt.get_weights()
    assert all(type(w) is np.ndarray for w in got)
    assert [w.shape for w in got] == [w.shape for w in weights]
    _close(got, weights)
    _close([v.numpy() for v in variables], values)

    # One compile, also after set_weights and a new learning rate, which must put the new
    # state where the old one was.
    with _context(mesh):
        shardings = [x.sharding for x in jax.tree.leaves(opt.state)]
        opt.set_weights(got)
        opt.learning_rate = 0.01
        with _step_compiles() as more:
            opt.apply_gradients(zip(put(_flat(_tree(3))), variables))
    assert len(compiles) == 1 and more == []
    for x, s in zip(jax.tree.leaves(opt.state), shardings):
        assert x.sharding.is_equivalent_to(s, x.ndim)


# ------------------------------------------------------------------ ZeRO-1
def test_split_spec_picks_largest_divisible_dimension():
    assert split_spec((16, 8), "data", 4) == P("data")
    assert split_spec((3, 8), "data", 4) == P(None, "data")
    assert split_spec((8, 8), "data", 4) == P("data")     # a tie: the first dimension
    assert split_spec((12, 2, 20), "d", 4) == P(None, None, "d")
    assert split_spec((6,), "data", 4) == P()            # not divisible: replicated
    assert split_spec((2,), "data", 4) == P()
    assert split_spec((), "data", 4) == P()


def _zero_inner(threshold):
    return adam(0.1, weight_decay=0.01, global_clipnorm=5.0, bucket_threshold=threshold)


def _zero_grads():   # "scale" has no gradient: it keeps its value and its state
    return [{**_tree(1 + k), "scale": None} for k in range(3)]


@functools.cache
def _zero_unsharded(threshold):
    return _run(_zero_inner(threshold), _f32(_tree(0)), [_f32(g) for g in _zero_grads()])


@pytest.mark.parametrize("threshold", [0, THRESHOLD])
@pytest.mark.parametrize("mode", MODES)
def test_shard_state_splits_state_and_keeps_params_replicated(mode, threshold):
    mesh = _mesh(mode)
    replicated = NamedSharding(mesh, P())
    inner = _zero_inner(threshold)
    expected_params, expected_state = _zero_unsharded(threshold)

    tx = shard_state(inner, mesh, axis="data")
    with _context(mesh):
        params, grads = jax.device_put((_f32(_tree(0)), [_f32(g) for g in _zero_grads()]), replicated)
        got_params, got_state = _run(tx, params, grads)
    _close(got_params, expected_params)
    _close(got_state, expected_state)
    assert float(got_params["scale"]) == float(_tree(0)["scale"].astype(np.float32))
    for p in jax.tree.leaves(got_params):
        assert p.sharding.is_fully_replicated
    assert jax.tree.structure(got_state) == jax.tree.structure(expected_state)
    for leaf in jax.tree.leaves(got_state):
        spec = split_spec(leaf.shape, "data", 4)
        assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim)
        local = [s.data.shape for s in leaf.addressable_shards]
        want = tuple(n // 4 if s == "data" else n for n, s in zip(leaf.shape, tuple(spec) + (None,) * 9))
        assert local == [want] * 8
    if threshold == 0:   # each device keeps a quarter of m and v: "big" (16, 8) by rows,
        m = got_state.m.to_tree()   # "emb" (3, 8) by columns, "bias" (6,) whole
        assert m["dense"]["big"].addressable_shards[0].data.shape == (4, 8)
        assert m["emb"].addressable_shards[0].data.shape == (3, 2)
        assert m["dense"]["bias"].addressable_shards[0].data.shape == (6,)


def test_shard_state_rejects_bad_arguments():
    mesh = _mesh("auto")
    with pytest.raises(ValueError, match=r"axis='batch'"):
        shard_state(adam(), mesh, axis="batch")
    with pytest.raises(TypeError, match="Mesh"):
        shard_state(adam(), "data")


# ------------------------------------------------------------------ aggregate_gradients
def _data_loss(w, x, y, denominator):
    return jnp.sum(jnp.square(jnp.tanh(x @ w["k"]) + w["b"][None, :] - y)) / denominator


def test_aggregate_gradients_in_shard_map_matches_one_device():
    mesh = _mesh("auto")   # 4-way data parallel: each device holds 8 rows of the batch
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((32, 6), (32, 3)))
    w0 = {"k": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "b": jnp.zeros((3,), jnp.float32),
          "frozen": None}
    inner = sgd(0.1, momentum=0.9, bucket_threshold=0)
    txs = {op: chain(aggregate_gradients("data", op), inner) for op in ("mean", "sum")}

    def full_step(w, state, x, y):
        u, state = inner.update(jax.grad(_data_loss)(w, x, y, 32), state, w)
        return apply_updates(w, u), state

    def local_step(ws, states, x, y):
        out = {}
        for op, tx in txs.items():
            # "mean": each device averages its own rows; "sum": each divides by the global batch
            g = jax.grad(_data_loss)(ws[op], x, y, 8 if op == "mean" else 32)
            u, state = tx.update(g, states[op], ws[op])
            out[op] = (apply_updates(ws[op], u), state)
        return {op: w for op, (w, _) in out.items()}, {op: s for op, (_, s) in out.items()}

    full_step = jax.jit(full_step)
    w_ref, s_ref = w0, inner.init(w0)
    for _ in range(3):
        w_ref, s_ref = full_step(w_ref, s_ref, x, y)
    # check_vma=True: autodiff has summed the replicated params' gradients already;
    # check_vma=False (as pmap): each device holds its own gradient, reduced here.
    for check_vma in (True, False):
        dp_step = jax.jit(jax.shard_map(
            local_step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()), check_vma=check_vma))
        ws, states = {op: w0 for op in txs}, {op: tx.init(w0) for op, tx in txs.items()}
        for _ in range(3):
            ws, states = dp_step(ws, states, x, y)
        for op in txs:
            assert ws[op]["frozen"] is None
            _close(ws[op], w_ref, rtol=1e-5, atol=1e-6)
            _close(states[op][1], s_ref, rtol=1e-5, atol=1e-6)


def test_aggregate_gradients_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"op='max'"):
        aggregate_gradients("data", "max")
    with pytest.raises(ValueError, match=r"axis_name=''"):
        aggregate_gradients("")
    tx = aggregate_gradients("data")
    with pytest.raises(ValueError, match="shard_map"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))


# ------------------------------------------------------------------ int8 state and Muon on split params
# name -> (shape, spec, ways the param is split): int8 blocks are 2048 elements.
SPLIT = {
    "cols": ((32, 512), P(None, "model"), 2),     # 8 blocks, split by columns
    "both": ((256, 64), P("data", "model"), 8),   # 8 blocks, split both ways
    "rows": ((4096,), P("data"), 4),              # 2 blocks, not a multiple of 4
    "small": ((3, 8), P(None, "data"), 4),        # 1 block (padded): replicated
}


def _split_params(mesh=None, seed=0):
    rng = np.random.default_rng(seed)
    host = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _, _) in SPLIT.items()}
    if mesh is None:
        return {k: jnp.asarray(x) for k, x in host.items()}
    return {k: jax.device_put(x, NamedSharding(mesh, SPLIT[k][1])) for k, x in host.items()}


def _steps(tx, params, mesh=None, steps=3):
    """`steps` jitted steps on the gradients `sin(k * params)`; init as `_init` does."""
    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.sin(p * 3.0), params)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    with contextlib.nullcontext() if mesh is None else _context(mesh):
        state = jax.jit(tx.init)(params) if mesh is None else _init(tx, params, mesh)
        if mesh is not None and AxisType.Auto in mesh.axis_types:
            # Auto axes: the layout of new arrays is XLA's choice unless given (shard_alike
            # keeps it for one leaf, but not for several of one shape: see docs/multihost.md).
            out = (jax.tree.map(lambda p: p.sharding, params), state_shardings(state, params))
            step = jax.jit(step, out_shardings=out)
        else:
            step = jax.jit(step)
        for _ in range(steps):
            params, state = step(params, state)
    return params, state


def _bytes_per_device(*arrays):
    per = {}
    for a in arrays:
        for shard in a.addressable_shards:
            per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
    return per


@pytest.mark.parametrize("mode", MODES)
def test_int8_state_of_split_params_is_split_like_them(mode):
    """int8 state on params split over the mesh: the numbers of one device, and each
    device holds 1/k of a quantised slot's bytes (codes and scales) where its param is
    split k ways and its block count allows, both after `init` and after steps."""
    mesh = _mesh(mode)
    tx = adam(1e-2, state_dtype="int8", min_quantized_size=16)
    want_params, want_state = _steps(tx, _split_params())
    got_params, got_state = _steps(tx, _split_params(mesh), mesh)
    _close(got_params, want_params)
    _close(got_state, want_state)
    for name, (_, spec, ways) in SPLIT.items():
        assert got_params[name].sharding.is_equivalent_to(NamedSharding(mesh, spec), 2)
        for slot in (got_state.m, got_state.v):
            q = slot.to_tree()[name]
            assert isinstance(q, Quantized), name
            total = q.codes.nbytes + q.absmax.nbytes
            per = _bytes_per_device(q.codes, q.absmax)
            assert len(per) == 8
            split = q.codes.shape[0] % ways == 0
            want = total // ways if split else total
            assert set(per.values()) == {want}, (name, per, total)
    init = _init(tx, _split_params(mesh), mesh) if mode == "auto" else None
    if init is None:
        with _context(mesh):
            init = jax.jit(tx.init)(_split_params(mesh))
    q = init.m.to_tree()["cols"]
    assert set(_bytes_per_device(q.codes, q.absmax).values()) == {(q.codes.nbytes + q.absmax.nbytes) // 2}


@pytest.mark.parametrize("mode", MODES)
def test_muon_on_split_matrices_matches_one_device(mode):
    """Muon's Newton-Schulz products contract a split dimension of a matrix split over
    the mesh: under Explicit axes too, the numbers of one device, the shardings kept."""
    mesh = _mesh(mode)
    tx = muon(1e-2)
    params = {"cols": ((16, 32), P(None, "model")), "rows": ((32, 8), P("data", None)),
              "both": ((8, 16), P("data", "model")), "bias": ((32,), P("model"))}
    rng = np.random.default_rng(1)
    host = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in params.items()}
    want_params, want_state = _steps(tx, {k: jnp.asarray(x) for k, x in host.items()})
    placed = {k: jax.device_put(x, NamedSharding(mesh, params[k][1])) for k, x in host.items()}
    got_params, got_state = _steps(tx, placed, mesh)
    _close(got_params, want_params, rtol=1e-5, atol=1e-6)
    _close(got_state, want_state, rtol=1e-5, atol=1e-6)
    for k, (_, spec) in params.items():
        assert got_params[k].sharding.is_equivalent_to(NamedSharding(mesh, spec), 2), k


@pytest.mark.parametrize("mode", MODES)
def test_zero1_bucket_reads_back_as_leaves(mode):
    """A ZeRO-1 bucket split over "data" reads back with `to_tree()` eagerly (each leaf
    replicated on the mesh, from one program) and under jit, in both modes."""
    mesh = _mesh(mode)
    tx = shard_state(adam(1e-2, bucket_threshold=64), mesh, "data")
    rng = np.random.default_rng(0)
    host = {"a": rng.normal(size=(16,)), "b": rng.normal(size=(3, 5)), "c": rng.normal(size=(9,))}
    want_params, want_state = _run(adam(1e-2, bucket_threshold=64), _f32(host),
                                   [_f32(host)] * 2)
    with _context(mesh):
        params = jax.device_put(_f32(host), NamedSharding(mesh, P()))
        got_params, got_state = _run(tx, params, [params] * 2)
        assert got_state.m.bucket.sharding.spec == P("data")   # 40 elements, 10 a device
        traced = jax.jit(lambda s: s.m.to_tree())(got_state)
    eager = got_state.m.to_tree()
    _close(got_params, want_params)
    for tree in (eager, traced):
        _close(tree, want_state.m.to_tree())
    for leaf in jax.tree.leaves(eager):
        assert leaf.sharding.is_fully_replicated
