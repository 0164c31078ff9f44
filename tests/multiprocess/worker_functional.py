"""Worker: kopt's functional layer over a global mesh, for many optimizers at once.

Run by `tests/test_multiprocess.py` as 2 processes x 4 CPU devices and as 1 process x 8
devices; both build the same global mesh over all 8 devices and must compute the same
numbers. For each layout (`dp`: data-parallel, `mp`: model-parallel, `2d`: data x model,
`zero1`: data-parallel with the state split over the data axis by `shard_state`), every
transform of `transforms()` and `optional_transforms()` runs `STEPS` steps in one jitted
program (see `run_all` for when an optional case fails); gradients come from
a loss over a batch split along the data axis (where the layout has one), so the step
also reduces gradients across processes. Saved per process: every param and state leaf
after the last step, gathered to host (`kopt.stateful.multihost.to_host`), and each
case's status ("ok", or the error an optional case raised).

Usage: worker_functional.py LAYOUT[,LAYOUT...] [--axes explicit|auto] [--cases all|optional]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import traceback

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kopt.functional as kf  # noqa: E402
from kopt.stateful import multihost  # noqa: E402

STEPS = 4
BATCH = 16

# name -> shape; the model is `tanh(x @ dense.kernel + dense.bias) @ head.kernel`, plus
# an embedding table and a scalar that the loss touches elementwise.
SHAPES = {"dense": {"kernel": (16, 32), "bias": (32,)}, "head": {"kernel": (32, 8)},
          "embedding": (8, 16), "scale": ()}

LAYOUTS = {   # layout -> (mesh shape, axis names, param specs, batch spec)
    "dp": ((8,), ("data",), {"dense": {"kernel": P(), "bias": P()}, "head": {"kernel": P()},
                             "embedding": P(), "scale": P()}, P("data")),
    "mp": ((8,), ("model",), {"dense": {"kernel": P(None, "model"), "bias": P("model")},
                              "head": {"kernel": P("model", None)},
                              "embedding": P(None, "model"), "scale": P()}, P()),
    "2d": ((2, 4), ("data", "model"),
           {"dense": {"kernel": P(None, "model"), "bias": P("model")},
            "head": {"kernel": P("model", None)}, "embedding": P("data", "model"),
            "scale": P()}, P("data")),
}
LAYOUTS["zero1"] = LAYOUTS["dp"]


def transforms() -> dict[str, kf.Transform]:
    """The cases run together, in one program (each on its own copy of the params)."""
    labels = {"dense": {"kernel": "adam", "bias": "lion"}, "head": {"kernel": "adam"},
              "embedding": "lion", "scale": "frozen"}
    return {
        "adam": kf.adam(1e-2),
        "adamw_clip": kf.adamw(1e-2, weight_decay=0.1, global_clipnorm=0.5),
        "lion": kf.lion(1e-3),
        "adafactor": kf.adafactor(1e-2),
        "partition": kf.partition({"adam": kf.adam(1e-2), "lion": kf.lion(1e-3),
                                   "frozen": None}, labels),
        "adam_bf16": kf.adam(1e-2, state_dtype="bfloat16"),
        "lion_bf16": kf.lion(1e-3, state_dtype="bfloat16"),
    }


def optional_transforms() -> dict[str, kf.Transform]:
    """Cases run on their own; an error is recorded as the case's status."""
    return {"muon": kf.muon(1e-2),
            "adam_int8": kf.adam(1e-2, state_dtype="int8", min_quantized_size=256)}


def host_data(seed: int):
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES,
                          is_leaf=lambda s: isinstance(s, tuple))
    batches = [(rng.normal(size=(BATCH, 16)).astype(np.float32),
                rng.normal(size=(BATCH, 8)).astype(np.float32)) for _ in range(STEPS)]
    return params, batches


def loss_fn(params, x, y, out_sharding=None):
    """`out_sharding`: the output's, needed with Explicit axes (a split contraction)."""
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"][None, :])
    out = jnp.matmul(h, params["head"]["kernel"], out_sharding=out_sharding)
    reg = jnp.sum(jnp.sin(params["embedding"])) * params["scale"]
    return jnp.mean((out - y) ** 2) + 0.01 * reg


def place(host, sharding):
    """A host array built straight onto `sharding` (each process makes its own shards)."""
    like = jax.ShapeDtypeStruct(host.shape, host.dtype, sharding=sharding)
    return multihost.from_host(host, like)


def run_layout(layout: str, axes: str, txs: dict[str, kf.Transform]):
    shape, names, specs, batch_spec = LAYOUTS[layout]
    kind = AxisType.Explicit if axes == "explicit" else AxisType.Auto
    mesh = jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))
    if layout == "zero1":
        txs = {k: kf.shard_state(tx, mesh, "data") for k, tx in txs.items()}
    host_params, batches = host_data(0)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    params = jax.tree.map(place, host_params, shardings)
    params = {k: params for k in txs}
    batch_sharding = NamedSharding(mesh, batch_spec)
    ctx = jax.set_mesh(mesh) if kind == AxisType.Explicit else contextlib.nullcontext()
    out_sharding = batch_sharding if kind == AxisType.Explicit else None

    def init(params):
        return {k: tx.init(params[k]) for k, tx in txs.items()}

    def step(params, states, x, y):
        new_params, new_states = {}, {}
        for k, tx in txs.items():
            grads = jax.grad(loss_fn)(params[k], x, y, out_sharding)
            updates, new_states[k] = tx.update(grads, states[k], params[k])
            new_params[k] = kf.apply_updates(params[k], updates)
        return new_params, new_states

    with ctx:
        if kind == AxisType.Explicit or layout == "zero1":   # shardings follow the params
            states = jax.jit(init)(params)                   # (or shard_state places them)
        else:   # Auto axes: a traced init cannot see them; say where each leaf goes
            out = {k: kf.state_shardings(tx, params[k]) for k, tx in txs.items()}
            states = jax.jit(init, out_shardings=out)(params)
        step = jax.jit(step)
        for x, y in batches:
            params, states = step(params, states, place(x, batch_sharding),
                                  place(y, batch_sharding))
    return params, states


def run_all(layout: str, axes: str, which: str) -> tuple[dict, dict[str, str]]:
    """Every case on `layout`: `({case: (params, state)}, {optional case: status})`.

    All cases run in one program; if that fails, the core cases run together and each
    optional case on its own, its error recorded as its status (it fails as it is
    traced, before anything runs, so the fallback costs little).
    """
    core, optional = transforms() if which == "all" else {}, optional_transforms()
    try:
        params, states = run_layout(layout, axes, {**core, **optional})
        return {k: (params[k], states[k]) for k in params}, {k: "ok" for k in optional}
    except Exception:   # the same error on every process
        traceback.print_exc()
    out, statuses = {}, {}
    if core:
        params, states = run_layout(layout, axes, core)
        out.update({k: (params[k], states[k]) for k in params})
    for name, tx in optional.items():
        try:
            params, states = run_layout(layout, axes, {name: tx})
        except Exception as e:
            statuses[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        statuses[name] = "ok"
        out[name] = (params[name], states[name])
    return out, statuses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("layouts")
    parser.add_argument("--axes", default="explicit", choices=["explicit", "auto"])
    parser.add_argument("--cases", default="all", choices=["all", "optional"])
    args = parser.parse_args()
    trees, results = {}, {}
    for layout in args.layouts.split(","):
        start = time.perf_counter()
        cases, statuses = run_all(layout, args.axes, args.cases)
        for name, (params, state) in cases.items():
            trees[f"{layout}/params[{name!r}]"] = params
            trees[f"{layout}/state[{name!r}]"] = state
        results.update({f"{layout}/status/{k}": np.asarray(v) for k, v in statuses.items()})
        print(f"{layout}: {time.perf_counter() - start:.1f} s", flush=True)
    # Every leaf to host in one collective call; keys: case prefix + key path.
    leaves, _ = jax.tree_util.tree_flatten_with_path(trees)
    hosts = multihost.to_host([x for _, x in leaves])
    for (path, _), host in zip(leaves, hosts):
        key = path[0].key   # "<layout>/params['<case>']"
        results[key + jax.tree_util.keystr(path[1:])] = host
    worker.save(results)


if __name__ == "__main__":
    main()
