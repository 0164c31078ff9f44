"""Worker: optimizer state split over the devices, in both axis modes.

**ZeRO-1 (`shard_state`) with bucketing, read back eagerly** (`run`). Small params share one flat bucket per slot, which `shard_state` splits over the "data"
axis of an 8-device mesh. For each of `Explicit` and `Auto` mesh axes: `STEPS` jitted
steps, then every slot read eagerly as a tree (`Packed.to_tree()`: one program per slot
that gathers the bucket, not one eager slice per leaf). Saved per process: the params,
each slot's leaves, the bucket's spec and how many elements of it each device holds.

**int8 state of model-parallel params** (`run_int8`): a (64, 512) param split by rows and
one split by columns over an 8-device "model" axis, Adam with int8 state, `STEPS` steps.
Saved: params and dequantised slots, and the bytes of codes and scales on each of this
process's devices.

Usage: worker_split_state.py   (run as 2 processes x 4 devices and 1 process x 8 devices)
"""

from __future__ import annotations

import contextlib

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kopt.functional as kf  # noqa: E402
from kopt.stateful import multihost  # noqa: E402

STEPS = 3
SHAPES = {"a": (16,), "b": (3, 5), "c": (41,), "d": (2, 2, 2)}   # 80 elements: 10 a device


def run(axes: str):
    kind = AxisType.Explicit if axes == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
    rng = np.random.default_rng(0)
    host = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    replicated = NamedSharding(mesh, P())
    params = {k: multihost.from_host(x, jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated))
              for k, x in host.items()}
    tx = kf.shard_state(kf.adamw(1e-2, weight_decay=0.1, global_clipnorm=1.0,
                                 bucket_threshold=64), mesh, "data")

    def step(params, state, k):
        grads = jax.tree.map(lambda p: jnp.sin(p * k), params)
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    ctx = jax.set_mesh(mesh) if kind == AxisType.Explicit else contextlib.nullcontext()
    with ctx:
        state = jax.jit(tx.init)(params)
        step = jax.jit(step)
        for k in range(STEPS):
            params, state = step(params, state, jnp.float32(k + 1))
    out = {f"params/{k}": v for k, v in params.items()}
    for slot in ("m", "v"):
        packed = getattr(state, slot)
        assert packed.bucket is not None, packed
        out.update({f"{slot}/{k}": v for k, v in packed.to_tree().items()})   # eager, outside
    info = {"spec": np.asarray(str(state.m.bucket.sharding.spec)),
            "local": np.asarray([s.data.size for s in state.m.bucket.addressable_shards])}
    return out, info


def run_int8(axes: str):
    kind = AxisType.Explicit if axes == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("model",), axis_types=(kind,))
    specs = {"rows": P("model", None), "cols": P(None, "model")}
    rng = np.random.default_rng(1)
    params = {}
    for k, spec in specs.items():
        x = rng.normal(size=(64, 512)).astype(np.float32)   # 16 blocks: 2 a device
        like = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
        params[k] = multihost.from_host(x, like)
    tx = kf.adam(1e-2, state_dtype="int8")

    def step(params, state, k):
        grads = jax.tree.map(lambda p: jnp.sin(p * k), params)
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    with jax.set_mesh(mesh) if kind == AxisType.Explicit else contextlib.nullcontext():
        if kind == AxisType.Explicit:
            state = jax.jit(tx.init)(params)
            step = jax.jit(step)
        else:   # Auto axes: the layouts are given (see docs/multihost.md)
            shardings = kf.state_shardings(tx, params)
            state = jax.jit(tx.init, out_shardings=shardings)(params)
            step = jax.jit(step, out_shardings=(jax.tree.map(lambda p: p.sharding, params),
                                                shardings))
        for k in range(STEPS):
            params, state = step(params, state, jnp.float32(k + 1))
        slots = {f"{slot}/{k}": q.dequantize() for slot in ("m", "v")
                 for k, q in getattr(state, slot).to_tree().items()}
    out = {**{f"params/{k}": v for k, v in params.items()}, **slots}
    info = {}
    for slot in ("m", "v"):
        for k, q in getattr(state, slot).to_tree().items():
            per = {}
            for a in (q.codes, q.absmax):
                for shard in a.addressable_shards:
                    per[shard.device.id] = per.get(shard.device.id, 0) + shard.data.nbytes
            info[f"{slot}/{k}/bytes"] = np.asarray([per[d] for d in sorted(per)])
            info[f"{slot}/{k}/total"] = np.asarray(q.codes.nbytes + q.absmax.nbytes)
    return out, info


def main():
    results = {}
    for axes in ("explicit", "auto"):
        out, info = run_int8(axes)
        hosts = multihost.to_host(out)
        results.update({f"int8/{axes}/{k}": v for k, v in hosts.items()})
        results.update({f"int8/{axes}/info/{k}": v for k, v in info.items()})
    for axes in ("explicit", "auto"):
        out, info = run(axes)
        hosts = multihost.to_host(out)   # one collective call for all
        results.update({f"{axes}/{k}": v for k, v in hosts.items()})
        results.update({f"{axes}/info/{k}": v for k, v in info.items()})
    worker.save(results)


if __name__ == "__main__":
    main()
