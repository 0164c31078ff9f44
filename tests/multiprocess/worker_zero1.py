"""Worker: ZeRO-1 (`shard_state`) with bucketing, read back eagerly, in both axis modes.

Small params share one flat bucket per slot, which `shard_state` splits over the "data"
axis of an 8-device mesh. For each of `Explicit` and `Auto` mesh axes: `STEPS` jitted
steps, then every slot read eagerly as a tree (`Packed.to_tree()`: one program per slot
that gathers the bucket, not one eager slice per leaf). Saved per process: the params,
each slot's leaves, the bucket's spec and how many elements of it each device holds.

Usage: worker_zero1.py   (run as 2 processes x 4 devices and 1 process x 8 devices)
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


def main():
    results = {}
    for axes in ("explicit", "auto"):
        out, info = run(axes)
        hosts = multihost.to_host(out)   # one collective call for all
        results.update({f"{axes}/{k}": v for k, v in hosts.items()})
        results.update({f"{axes}/info/{k}": v for k, v in info.items()})
    worker.save(results)


if __name__ == "__main__":
    main()
