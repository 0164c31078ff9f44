"""Train a small model with kopt across processes (`jax.distributed`), two ways.

One global mesh spans every process's devices; the batch is split over the "data" axis
and the hidden layer over the "model" axis. The same model is trained with the
functional layer (`kopt.functional.adamw` in a jitted step) and with the stateful facade
(`kopt.optimizers.AdamW.minimize` on `kopt.Variable`s); both give the same numbers.

On one machine, as N processes with 4 CPU devices each (the script starts them):

    python examples/multiprocess_train.py --num-processes 2

On a cluster, start one process per host with the same arguments but its own id:

    python examples/multiprocess_train.py --coordinator HOST0:1234 --num-processes 4 --process-id I

On TPU pods, SLURM and other clusters JAX can discover, pass `--auto`: it calls
`jax.distributed.initialize()` with no arguments. See docs/multihost.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=None,
                   help="this process's id; without it, the script starts all processes here")
    p.add_argument("--coordinator", default=None, help="host:port of process 0")
    p.add_argument("--auto", action="store_true",
                   help="jax.distributed.initialize() with no arguments (TPU pods, SLURM)")
    p.add_argument("--cpu-devices", type=int, default=4,
                   help="CPU devices per process when running on CPU (default 4)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds before the local launcher stops every process")
    return p.parse_args(argv)


# ------------------------------------------------------------------ local launcher
def launch(args) -> int:
    """Start `args.num_processes` copies of this script on 127.0.0.1 and wait for them.

    All are killed (with what they started) when one fails or the run exceeds
    `--timeout`.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], []
    for i in range(args.num_processes):
        cmd = [sys.executable, os.path.abspath(__file__), "--num-processes",
               str(args.num_processes), "--process-id", str(i), "--coordinator",
               f"127.0.0.1:{port}", "--cpu-devices", str(args.cpu_devices),
               "--steps", str(args.steps)]
        # Process 0 prints as it goes; the others' output is shown when they end.
        log = None if i == 0 else tempfile.TemporaryFile("w+")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log and subprocess.STDOUT,
                                      start_new_session=True))
    deadline, code = time.monotonic() + args.timeout, 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                print(f"a process failed (exit status {failed[0]}); stopping the others",
                      file=sys.stderr)
                code = failed[0]
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                print(f"timed out after {args.timeout:.0f} s; stopping every process",
                      file=sys.stderr)
                code = 124
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for i, log in enumerate(logs):
            if log is not None:
                log.seek(0)
                print(f"--- output of process {i} ---\n{log.read()}", end="", flush=True)
                log.close()
    return code


# ------------------------------------------------------------------ one process
def start_jax(args):
    """Join the other processes; on CPU, give this process its devices first."""
    if args.cpu_devices and "--xla_force_host_platform_device_count" not in os.environ.get(
            "XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={args.cpu_devices}").strip()
    import jax

    if args.auto:
        jax.distributed.initialize()
    elif args.num_processes > 1:
        # Collectives between the processes' CPU devices (GPUs and TPUs have their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    return jax


def train(args) -> None:
    jax = start_jax(args)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import kopt
    import kopt.functional as kf
    from kopt.stateful import multihost

    n = jax.device_count()
    model = 2 if n % 2 == 0 else 1
    mesh = jax.make_mesh((n // model, model), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    lead = jax.process_index() == 0

    def log(*a):
        if lead:
            print(*a, flush=True)

    log(f"{jax.process_count()} process(es), {n} devices, mesh {dict(mesh.shape)}")

    # Params: the same full host values on every process, each building its own shards.
    rng = np.random.default_rng(0)
    host = {"w1": rng.normal(size=(16, 32)).astype(np.float32) / 4,
            "b1": np.zeros(32, np.float32),
            "w2": rng.normal(size=(32, 1)).astype(np.float32) / 6}
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}
    like = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, specs[k]))
            for k, v in host.items()}
    params = {k: multihost.from_host(v, like[k]) for k, v in host.items()}

    # Data: each process makes (in real life, loads) only its own rows of the batch.
    teacher = np.random.default_rng(1).normal(size=(16, 1)).astype(np.float32)
    batch_sharding = NamedSharding(mesh, P("data"))
    global_batch = 8 * n

    def batch(step):
        rows = global_batch // jax.process_count()
        local = np.random.default_rng([step, jax.process_index()])
        x = local.normal(size=(rows, 16)).astype(np.float32)
        y = np.tanh(x @ teacher)
        return (jax.make_array_from_process_local_data(batch_sharding, x),
                jax.make_array_from_process_local_data(batch_sharding, y))

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean((h @ p["w2"] - y) ** 2)

    # 1. The functional layer. The state is built under jit straight onto its shardings
    # (an eager tx.init would make its counters on one local device).
    tx = kf.adamw(1e-2, weight_decay=1e-4, global_clipnorm=1.0)
    state = jax.jit(tx.init, out_shardings=kf.state_shardings(tx, params))(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state, loss

    start = time.perf_counter()
    for t in range(args.steps):
        params, state, loss = step(params, state, *batch(t))
        if t % 20 == 0 or t == args.steps - 1:
            log(f"functional step {t:3d}  loss {float(loss):.5f}")   # replicated: any process
    log(f"functional: {args.steps} steps in {time.perf_counter() - start:.1f} s")

    # 2. The stateful facade on Variables sharded like the params.
    variables = [kopt.Variable(multihost.from_host(host[k], like[k]), name=k) for k in host]
    opt = kopt.optimizers.AdamW(1e-2, weight_decay=1e-4, global_clipnorm=1.0)

    def stateful_loss(values, x, y):
        return loss_fn(dict(zip(host, values)), x, y)

    start = time.perf_counter()
    for t in range(args.steps):
        loss = opt.minimize(stateful_loss, variables, *batch(t))
        if t % 20 == 0 or t == args.steps - 1:
            log(f"stateful   step {t:3d}  loss {float(loss):.5f}")
    log(f"stateful: {args.steps} steps in {time.perf_counter() - start:.1f} s")

    # Collectives: every process calls them. get_weights and numpy() all-gather full
    # host arrays; local_view (not a collective) shows this process's own parts.
    weights = opt.get_weights()
    final = {v.name: v.numpy() for v in variables}
    functional = multihost.to_host(params)
    diff = max(float(np.max(np.abs(final[k] - functional[k]))) for k in host)
    parts = multihost.local_view(variables[0].value)
    print(f"process {jax.process_index()}: w1 parts held here: {len(parts)} "
          f"of shape {parts[0].data.shape}", flush=True)
    log(f"get_weights: {len(weights)} arrays, iterations {int(weights[0])}, "
        f"m of w1 {weights[1].shape}")
    log(f"functional and stateful final params agree: max |difference| = {diff:.2e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.process_id is None and args.num_processes > 1 and not args.auto:
        return launch(args)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
