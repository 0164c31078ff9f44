"""Worker: orbax checkpoints of the optimizer state and the params across processes.

`save` (2 processes x 4 devices, or 1 x 8): on a 4 x 2 ("data", "model") mesh, the
functional layer (params and `kf.adam` state, built with `jax.jit(tx.init,
out_shardings=state_shardings(...))`) and the stateful facade (`kopt.Variable`s and a
`kopt.optimizers.Adam`) each run 2 steps; an orbax `CheckpointManager` saves both at step
2; 3 more steps give `continued/...`. Then fresh params, state, Variables and optimizer
are restored from step 2 (targets with the live shardings) and run the same 3 steps:
`resumed/...`. `eager_save` records what saving a state made eagerly with
`tx.init(params)` gives ("ok", or the error), `eager_placed_save` the same state after
`jax.device_put(state, state_shardings(state, params))`.

`restore --ckpt DIR` (1 process x 4 devices): restores step 2 of DIR onto a 2 x 2 mesh
and runs the 3 steps: `resumed/...`.

Both optimizers use `bucket_threshold=64` (the small leaves share a `Packed` bucket): a
state with bucketing off holds an empty `Packed`, which orbax cannot save yet.
"""

from __future__ import annotations

import argparse

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kopt  # noqa: E402
import kopt.functional as kf  # noqa: E402
from kopt.stateful import multihost  # noqa: E402

SPECS = {"kernel": ((16, 8), P("data", "model")), "bias": ((8,), P("model")),
         "gain": ((5,), P())}
THRESHOLD = 64
SAVE_AT, TOTAL = 2, 5


def host_params():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, (s, _) in SPECS.items()}


def host_grads(t):
    return {k: np.cos(v * (t + 1)).astype(np.float32) for k, v in host_params().items()}


class Run:
    """The functional and the stateful training, on `mesh`, from `values` (host)."""

    def __init__(self, mesh, values):
        self.like = {k: jax.ShapeDtypeStruct(s, np.float32, sharding=NamedSharding(mesh, spec))
                     for k, (s, spec) in SPECS.items()}
        self.tx = kf.adam(1e-2, bucket_threshold=THRESHOLD)
        self.params = {k: multihost.from_host(values[k], self.like[k]) for k in SPECS}
        self.state = jax.jit(self.tx.init, out_shardings=kf.state_shardings(self.tx, self.params))(
            self.params)
        self.vars = [kopt.Variable(multihost.from_host(values[k], self.like[k]), name=k)
                     for k in SPECS]
        self.opt = kopt.optimizers.Adam(1e-2, bucket_threshold=THRESHOLD)
        self.opt.build(self.vars)

        def step(params, state, grads):
            updates, state = self.tx.update(grads, state, params)
            return kf.apply_updates(params, updates), state
        self.step_fn = jax.jit(step)

    def step(self, t):
        grads = {k: multihost.from_host(g, self.like[k]) for k, g in host_grads(t).items()}
        self.params, self.state = self.step_fn(self.params, self.state, grads)
        self.opt.apply_gradients([(grads[v.name], v) for v in self.vars])

    def tree(self):
        return {"f_params": self.params, "f_state": self.state,
                "s_params": [v.value for v in self.vars], "s_state": self.opt.state}

    def load(self, tree):
        self.params, self.state = tree["f_params"], tree["f_state"]
        for v, value in zip(self.vars, tree["s_params"]):
            v.assign(value)
        self.opt.state = tree["s_state"]

    def results(self, prefix):
        out = {f"{prefix}/f/{k}": v for k, v in multihost.to_host(self.params).items()}
        out.update({f"{prefix}/s/{v.name}": v.numpy() for v in self.vars})
        out.update({f"{prefix}/s_weights/{i}": w for i, w in enumerate(self.opt.get_weights())})
        out[f"{prefix}/f_count"] = multihost.to_host(kf.iteration_count(self.state))
        return out


def restore(mesh, directory):
    run = Run(mesh, {k: np.zeros(s, np.float32) for k, (s, _) in SPECS.items()})
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, run.tree())
    with ocp.CheckpointManager(directory) as manager:
        run.load(manager.restore(SAVE_AT, args=ocp.args.StandardRestore(target)))
    results = {"restored_iterations": np.asarray(int(run.opt.iterations))}
    for t in range(SAVE_AT, TOTAL):
        run.step(t)
    results.update(run.results("resumed"))
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["save", "restore"])
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    if args.mode == "restore":
        mesh = jax.make_mesh((2, 2), ("data", "model"))
        worker.save(restore(mesh, args.ckpt))
        return
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    directory = worker.out_dir() / "ckpt"
    run = Run(mesh, host_params())
    for t in range(SAVE_AT):
        run.step(t)
    with ocp.CheckpointManager(directory) as manager:
        manager.save(SAVE_AT, args=ocp.args.StandardSave(run.tree()))
        manager.wait_until_finished()
    for t in range(SAVE_AT, TOTAL):
        run.step(t)
    results = run.results("continued")
    results.update(restore(mesh, directory))

    eager = run.tx.init(run.params)   # made eagerly: where do its counters live?
    placed = jax.device_put(eager, kf.state_shardings(eager, run.params))   # the workaround
    for key, state in [("eager_save", eager), ("eager_placed_save", placed)]:
        try:
            with ocp.CheckpointManager(worker.out_dir() / key) as manager:
                manager.save(0, args=ocp.args.StandardSave({"state": state}))
                manager.wait_until_finished()
            results[key] = np.asarray("ok")
        except Exception as e:   # the same on every process
            results[key] = np.asarray(f"{type(e).__name__}: {e}")
    worker.save(results)


if __name__ == "__main__":
    main()
