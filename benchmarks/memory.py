#!/usr/bin/env python
"""Low-precision optimizer state: memory, step time and final loss against float32 state.

Run from the repository root::

    python benchmarks/memory.py            # full trees; about 5 minutes on a 2-core CPU
    python benchmarks/memory.py --quick    # small stand-in trees, short training: a smoke test
    python benchmarks/memory.py --trees gpt2 --opts adam --rounds 5

For each tree (the ResNet-50-like and GPT-2-small-like trees of `benchmarks/step.py`),
optimizer (Adam; SGD with momentum 0.9) and `state_dtype` (float32, i.e. kopt's default;
'bfloat16'; 'int8') it reports:

- ``B/param``: the optimizer state's bytes (every array of the state: slots, block
  scales, counters) over the number of parameters;
- ``peak MB``: the peak memory of one jitted, donated step (params and state donated,
  gradients not) from XLA's compiled memory analysis: arguments + outputs - aliased
  outputs + temporaries; ``temp MB`` is the temporaries alone;
- ``step ms``: the median wall time of one step (`block_until_ready` on the params), and
  ``x f32``, its ratio to float32 state; ``x f32 cpu`` is the same ratio of process CPU
  time, steadier than wall time on a loaded machine. The state dtypes are timed side by
  side, round-robin (``--rounds`` rounds of ``--steps`` steps each, after a warm-up), so
  all of them see the same machine load.

Then it trains the convergence problem: a 3-layer tanh MLP (32-128-128-8) regresses a
noisy random teacher network on 2048 samples, minibatches of 128, 600 steps of Adam with a
cosine-decayed learning rate from 3e-3 (min_quantized_size=1024, so that every kernel
is quantised), from ``--seeds`` seeds; it reports the mean final training loss per state
dtype and its difference from float32 state.

It prints a table and the targets (Adam state <= 2.1 B/param with int8 and <= 4.1 with
bfloat16; step <= 1.5x float32 state; final loss within 2%) and writes JSON (``--out``,
default ``benchmarks/results-memory.json``, or ``results-memory-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):   # the working tree's kopt, and step.py's tree builders
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from step import HostTree, _git_rev, _loadavg, tree_description  # noqa: E402

import kopt  # noqa: E402
from kopt.functional.base import apply_updates  # noqa: E402

MB = 1 << 20
TREES = ("resnet50", "gpt2")
OPTS = ("adam", "sgdm")
DTYPES = ("float32", "bfloat16", "int8")
TARGET_BYTES = {"int8": 2.1, "bfloat16": 4.1}
TARGET_RATIO = 1.5
TARGET_LOSS = 0.02


def make_tx(opt: str, state_dtype: str, **kw):
    sd = None if state_dtype == "float32" else state_dtype   # None: kopt's default
    if opt == "adam":
        return kopt.functional.adam(kw.pop("learning_rate", 1e-3), state_dtype=sd, **kw)
    return kopt.functional.sgd(0.01, momentum=0.9, state_dtype=sd, **kw)


# --------------------------------------------------------------------------- memory and time
def _step_fn(tx):
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply_updates(p, u), s
    return jax.jit(step, donate_argnums=(0, 1))


def measure_tree(tree: HostTree, opt: str, args) -> list[dict]:
    """One row per state dtype: bytes, compiled memory, and interleaved step times."""
    grads = {n: jnp.array(g) for n, g in zip(tree.names, tree.grads)}
    runs = {}
    rows = {}
    for sd in DTYPES:
        tx = make_tx(opt, sd)
        params = {n: jnp.array(x) for n, x in zip(tree.names, tree.params)}
        state = tx.init(params)
        state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
        step = _step_fn(tx)
        t0 = time.perf_counter()
        compiled = step.lower(params, state, grads).compile()
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        params, state = compiled(params, state, grads)     # first step
        jax.block_until_ready(params)
        for _ in range(args.warmup):
            params, state = compiled(params, state, grads)
        jax.block_until_ready(params)
        runs[sd] = [compiled, params, state]
        rows[sd] = {
            "tree": tree.name, "opt": opt, "state_dtype": sd, "n_params": tree.n_params,
            "n_leaves": tree.n_leaves, "state_bytes": state_bytes,
            "bytes_per_param": state_bytes / tree.n_params,
            "peak_bytes": peak, "temp_bytes": mem.temp_size_in_bytes,
            "compile_and_first_step_s": time.perf_counter() - t0, "wall_s": [], "cpu_s": [],
        }
    for _ in range(args.rounds):        # round-robin: every dtype sees the same load
        for sd in DTYPES:
            compiled, params, state = runs[sd]
            for _ in range(args.steps):
                w, c = time.perf_counter(), time.process_time()
                params, state = compiled(params, state, grads)
                jax.block_until_ready(params)
                rows[sd]["wall_s"].append(time.perf_counter() - w)
                rows[sd]["cpu_s"].append(time.process_time() - c)
            runs[sd][1:] = [params, state]
    for sd in DTYPES:
        r = rows[sd]
        r["step_s"] = statistics.median(r["wall_s"])
        r["step_cpu_s"] = statistics.median(r["cpu_s"])
        r["steps"] = len(r["wall_s"])
        del r["wall_s"], r["cpu_s"]
    for sd in DTYPES:
        rows[sd]["x_f32"] = rows[sd]["step_s"] / rows["float32"]["step_s"]
        rows[sd]["x_f32_cpu"] = rows[sd]["step_cpu_s"] / rows["float32"]["step_cpu_s"]
    return [rows[sd] for sd in DTYPES]


# --------------------------------------------------------------------------- convergence
def _teacher_problem(seed: int, n: int, steps: int, batch: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    w1 = rng.standard_normal((32, 64)) / np.sqrt(32)
    w2 = rng.standard_normal((64, 8)) / np.sqrt(64)
    y = (np.tanh(x @ w1) @ w2 + 0.1 * rng.standard_normal((n, 8))).astype(np.float32)
    params = [{"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
               "b": jnp.zeros((b,), jnp.float32)} for a, b in ((32, 128), (128, 128), (128, 8))]
    batches = jnp.asarray(rng.integers(0, n, (steps, batch)))
    return params, jnp.asarray(x), jnp.asarray(y), batches


def _mlp_loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"][None, :])
    return jnp.mean((h @ params[-1]["w"] + params[-1]["b"][None, :] - y) ** 2)


def convergence(args) -> list[dict]:
    steps = 150 if args.quick else 600
    out = []
    for opt in ("adam", "sgdm"):
        losses = {sd: [] for sd in DTYPES}
        for seed in range(args.seeds):
            params, x, y, batches = _teacher_problem(seed, 2048, steps, 128)
            for sd in DTYPES:
                kw = {"min_quantized_size": 1024}
                if opt == "adam":
                    kw["learning_rate"] = kopt.schedules.CosineDecay(3e-3, steps)
                tx = make_tx(opt, sd, **kw)

                def run(carry, batch, tx=tx, x=x, y=y):
                    p, s = carry
                    g = jax.grad(_mlp_loss)(p, x[batch], y[batch])
                    u, s = tx.update(g, s, p)
                    return (apply_updates(p, u), s), None

                train = jax.jit(lambda p, b, tx=tx, run=run: jax.lax.scan(run, (p, tx.init(p)), b)[0][0])
                losses[sd].append(float(_mlp_loss(train(params, batches), x, y)))
        base = float(np.mean(losses["float32"]))
        for sd in DTYPES:
            mean = float(np.mean(losses[sd]))
            out.append({"opt": opt, "state_dtype": sd, "steps": steps, "seeds": args.seeds,
                        "final_losses": losses[sd], "final_loss": mean,
                        "rel_diff": mean / base - 1.0})
    return out


# --------------------------------------------------------------------------- report
def format_table(rows, conv) -> str:
    head = (f"{'tree':<9} {'opt':<5} {'state':<9} {'B/param':>8} {'peak MB':>9} {'temp MB':>8} "
            f"{'step ms':>9} {'x f32':>6} {'x f32 cpu':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['tree']:<9} {r['opt']:<5} {r['state_dtype']:<9} {r['bytes_per_param']:8.3f} "
            f"{r['peak_bytes'] / MB:9.1f} {r['temp_bytes'] / MB:8.1f} {r['step_s'] * 1e3:9.2f} "
            f"{r['x_f32']:6.2f} {r['x_f32_cpu']:9.2f}")
    lines += ["", f"{'convergence':<12} {'state':<9} {'final loss':>11} {'vs f32':>8}"]
    for c in conv:
        lines.append(f"{c['opt']:<12} {c['state_dtype']:<9} {c['final_loss']:11.5f} "
                     f"{c['rel_diff'] * 100:+7.2f}%")
    return "\n".join(lines)


def format_targets(rows, conv) -> str:
    out = ["targets (Adam):"]
    for r in rows:
        if r["opt"] != "adam" or r["state_dtype"] == "float32":
            continue
        sd, tree = r["state_dtype"], r["tree"]
        b = TARGET_BYTES[sd]
        out.append(f"  {tree:<9} {sd:<9} state {r['bytes_per_param']:.3f} B/param (<= {b}: "
                   f"{'ok' if r['bytes_per_param'] <= b else 'MISSED'}); step {r['x_f32']:.2f}x "
                   f"wall, {r['x_f32_cpu']:.2f}x cpu (<= {TARGET_RATIO}: "
                   f"{'ok' if r['x_f32'] <= TARGET_RATIO else 'MISSED'})")
    for c in conv:
        if c["opt"] == "adam" and c["state_dtype"] != "float32":
            ok = abs(c["rel_diff"]) <= TARGET_LOSS
            out.append(f"  convergence {c['state_dtype']:<9} final loss {c['rel_diff'] * 100:+.2f}% "
                       f"of float32 (within {TARGET_LOSS:.0%}: {'ok' if ok else 'MISSED'})")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", default=",".join(TREES), help=f"comma-separated subset of {TREES}")
    p.add_argument("--opts", default=",".join(OPTS), help=f"comma-separated subset of {OPTS}")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 4; 2 quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per dtype per round (default 5; 2 quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--seeds", type=int, default=None, help="convergence seeds (default 3; 1 quick)")
    p.add_argument("--skip-convergence", action="store_true")
    p.add_argument("--quick", action="store_true", help="small trees, short runs: a smoke test")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    args.trees = [t for t in args.trees.split(",") if t]
    args.opts = [o for o in args.opts.split(",") if o]
    for t in args.trees:
        if t not in TREES:
            raise SystemExit(f"unknown tree {t!r}; choose from {TREES}")
    for o in args.opts:
        if o not in OPTS:
            raise SystemExit(f"unknown optimizer {o!r}; choose from {OPTS}")
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.steps = args.steps or (2 if args.quick else 5)
    args.seeds = args.seeds or (1 if args.quick else 3)
    if args.out is None:
        args.out = os.path.join(_HERE, "results-memory-quick.json" if args.quick
                                else "results-memory.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    load0 = _loadavg()
    dev = jax.devices()[0]
    print(f"device: {dev} ({getattr(dev, 'device_kind', dev.platform)}); jax {jax.__version__}; "
          f"{os.cpu_count()} CPUs, load average {load0}", flush=True)
    rows, trees_meta = [], {}
    for name in args.trees:
        tree = HostTree(name, args.quick)
        trees_meta[name] = {"description": tree_description(name, args.quick),
                            "n_params": tree.n_params, "n_leaves": tree.n_leaves}
        for opt in args.opts:
            t = time.perf_counter()
            new = measure_tree(tree, opt, args)
            rows += new
            print(f"  {name:<9} {opt:<5} " + "  ".join(
                f"{r['state_dtype']} {r['step_s'] * 1e3:.1f} ms" for r in new)
                + f"   [{time.perf_counter() - t:.0f} s]", flush=True)
    conv = [] if args.skip_convergence else convergence(args)
    total = time.perf_counter() - t_start
    table = format_table(rows, conv)
    targets = format_targets(rows, conv)
    result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "devices": [str(d) for d in jax.devices()],
            "platform": dev.platform, "jax": jax.__version__, "python": platform.python_version(),
            "kopt_git": _git_rev(), "cpus": os.cpu_count(), "loadavg_start": load0,
            "loadavg_end": _loadavg(), "total_s": total, "trees": trees_meta,
            "args": {k: v for k, v in vars(args).items()},
        },
        "rows": rows, "convergence": conv, "table": table, "targets": targets,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(table)
    print()
    if args.quick:
        print("(--quick: small stand-in trees and short training, so the targets do not apply)")
    print(targets)
    print(f"\ntotal {total:.0f} s; load average at start {load0}, at end {_loadavg()}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
