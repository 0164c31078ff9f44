"""Worker: params without a mesh in a run of several processes (each trains on its own).

Each process keeps its own params, not sharded over any mesh: host (numpy) arrays, arrays
on one of its own devices (`SingleDeviceSharding`) and abstract params (no sharding).
For each, the state is made where `kopt.functional.state_shardings` says, stepped twice
and read back. Saved per case: `status` ("ok" or the error), `local` (every state leaf on
this process's own devices), `device` (which of this process's devices holds the step counter)
and the state's leaves.
"""

from __future__ import annotations

import traceback

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kopt.functional as kf  # noqa: E402


def host_params():
    rng = np.random.default_rng(jax.process_index())   # every process its own model
    return {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}


def run(case: str, tx):
    host = host_params()
    if case == "numpy":
        params = host
        state = jax.jit(tx.init, out_shardings=kf.state_shardings(tx, params))(params)
    elif case == "single":
        device = jax.local_devices()[1]
        params = jax.device_put(host, device)
        state = jax.device_put(tx.init(params), kf.state_shardings(tx.init(params), params))
    else:   # abstract params: the target of a restore, say
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
        state = jax.jit(tx.init, out_shardings=kf.state_shardings(tx, abstract))(host)
        params = host
    step = jax.jit(tx.update)
    for k in range(2):
        grads = {n: np.float32(k + 1) * jnp.sin(jnp.asarray(p)) for n, p in host.items()}
        _, state = step(grads, state, params)
    leaves = jax.tree.leaves(state)
    local = all(d.process_index == jax.process_index() for x in leaves for d in x.sharding.device_set)
    return state, local


def main():
    results = {}
    for case in ("numpy", "single", "abstract"):
        try:
            state, local = run(case, kf.adam(1e-2))
        except Exception as e:
            traceback.print_exc()
            results[f"{case}/status"] = np.asarray(f"{type(e).__name__}: {e}"[:2000])
            continue
        results[f"{case}/status"] = np.asarray("ok")
        results[f"{case}/local"] = np.asarray(local)
        counter_device = next(iter(state.count.sharding.device_set))
        results[f"{case}/device"] = np.asarray(jax.local_devices().index(counter_device))
        for i, x in enumerate(jax.tree.leaves(state)):
            results[f"{case}/state/{i}"] = np.asarray(x)
    worker.save(results)


if __name__ == "__main__":
    main()
