#!/usr/bin/env python
"""One optimizer step, side by side: kopt (functional and stateful), optax and Keras 3.

Run from the repository root::

    pip install -e ".[bench]"
    python benchmarks/step.py                 # full run, ~5 minutes on a 2-core CPU
    python benchmarks/step.py --quick         # small trees, a few steps: a smoke test
    python benchmarks/step.py --trees resnet50,small1000 --opts adam --skip-keras

What is measured, per (tree, optimizer, implementation) row:

- ``step ms``: the median wall time of one step, each step followed by
  ``jax.block_until_ready`` on its outputs, over at most ``--steps`` timed steps after the
  first step and ``--warmup`` more (rows stop early after ``--min-steps`` once they have
  spent ``--budget`` seconds; a row whose warm-up step alone takes longer than the budget,
  such as Keras eager on 1000 leaves, warms up once and times 3 steps).
- ``floor ms``: ``bytes_per_param * n_params / bandwidth``, with 28 B/param for Adam
  (read p, g, m, v; write p, m, v in float32) and 20 B/param for SGD with momentum
  (read p, g, m; write p, m). The bandwidth is measured in the same run: XLA's own
  ``a + 2*b`` kernel, jitted with ``a`` donated, over ``--bw-elems`` float32 elements;
  it moves ``3 * 4 * n`` bytes per call.
- ``x floor`` and ``x optax``: the median step over the floor, and over optax's median
  step for the same tree and optimizer.
- ``1st step s``: time to the first step: creating the optimizer state (``init`` /
  ``build``), tracing, compiling and running the first step.
- ``compile x optax``: the row's compile time over optax's, where a row's compile time is
  its first step minus its median step (so: creating the state, tracing and compiling;
  the same measure for every implementation, jitted or not).
- ``x bound``: the median step over the ``bound`` row's for the same tree: a jitted
  pytree-in/pytree-out ``[p + g for ...]`` with ``p`` donated, the least a step that
  reads and writes the params as a pytree can cost (it does no optimizer maths at all).
- ``peak MB``: the peak memory of the steady-state steps, and ``x ideal``: that peak over
  params + grads + optimizer state (Adam 16 B/param, SGD-momentum 12 B/param).
  Where the device reports ``memory_stats()`` (GPU, TPU) it is the device's
  ``peak_bytes_in_use``; that counter cannot be reset, so each row then runs in its own
  subprocess (``--isolate``, on by default there) and the peak is the whole process's,
  i.e. params + grads + state + step temporaries (setup allocates less than a step).
  Where it does not (the CPU backend) it is measured on the host: the bytes of all live
  JAX arrays after the warm-up steps (params, grads, optimizer state, anything leaked),
  plus how far the process's RSS high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) rises above the RSS during the timed steps, which catches
  the steps' temporaries and any non-donated output buffers. Compiled code and allocator
  slack are left out, as the device counter leaves them out. Without ``/proc`` it falls
  back to the ``getrusage`` high-water mark, which only shows rows that raise the
  process's peak.

Every implementation gets the same inputs: per tree, params and gradients are drawn once
on the host (NumPy, fixed seed); the gradients are put on the device once and shared by
every row (never donated), and each row starts from its own device copy of the params.
Jitted steps donate params and optimizer state, so a step reuses their buffers.

Implementations (``--impls``):
  optax          ``optax.adam`` / ``optax.sgd(momentum=0.9)``: jit(update + apply_updates),
                 params and state donated
  kopt           ``kopt.functional.adam`` / ``sgd``: the same jitted, donated step
  kopt-stateful  ``kopt.optimizers.Adam`` / ``SGD`` ``apply_gradients`` on
                 ``kopt.Variable``s, in a plain Python loop
  keras-jit      Keras 3 (JAX backend) ``optimizer.stateless_apply``, jitted and donated
  keras-eager    Keras 3 (JAX backend) eager ``apply_gradients`` on ``keras.Variable``s
  bound          not an optimizer: jit(``[p + g for ...]``), pytree in and out, params
                 donated; the ``x bound`` column's reference

Hyperparameters: Adam lr 1e-3, betas (0.9, 0.999), epsilon 1e-7 (optax adds epsilon after
bias correction, Keras and kopt before; the cost is the same); SGD lr 0.01, momentum 0.9.

The script prints a table and writes JSON (``--out``, default ``benchmarks/results.json``).
Nothing in it is CPU-specific; on an accelerator it uses the device's memory counters.
"""

from __future__ import annotations

import os

# Keras must run on JAX; this has to happen before keras is first imported.
os.environ["KERAS_BACKEND"] = "jax"
# Do not let the (GPU) allocator grab most of the device up front: the parent process
# measures the bandwidth and then runs rows in subprocesses (see --isolate).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import ctypes
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:  # run the working tree's kopt even when it is not installed
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_common import git_rev  # noqa: E402

MB = 1 << 20
BYTES_PER_PARAM = {"adam": 28, "sgdm": 20}    # float32 traffic of one step
STATE_PER_PARAM = {"adam": 2, "sgdm": 1}      # slots per param (m, v) / (momentum,)
ADAM = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
SGDM = dict(learning_rate=0.01, momentum=0.9)
ALL_TREES = ("leaf32m", "resnet50", "gpt2", "small1000")
ALL_OPTS = ("adam", "sgdm")
ALL_IMPLS = ("optax", "kopt", "kopt-stateful", "keras-jit", "keras-eager", "bound")
ALIASES = {"leaf": "leaf32m", "single": "leaf32m", "resnet": "resnet50", "gpt": "gpt2",
           "transformer": "gpt2", "small": "small1000", "sgd": "sgdm", "momentum": "sgdm"}


# --------------------------------------------------------------------------- trees
def resnet50_shapes(width: float = 1.0, classes: int = 1000, blocks=(3, 4, 6, 3)):
    """ResNet-50's trainable weights: 53 conv kernels (HWIO), BatchNorm gamma/beta after
    each, and the final dense layer: 161 leaves, 25.6M params at full width."""
    out = []
    ch = lambda c: max(1, int(round(c * width)))

    def conv(name, k, cin, cout):
        out.append((f"{name}/kernel", (k, k, cin, cout)))
        out.append((f"{name}/bn/gamma", (cout,)))
        out.append((f"{name}/bn/beta", (cout,)))

    conv("stem", 7, 3, ch(64))
    cin = ch(64)
    for s, (n_blocks, w) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n_blocks):
            pre = f"stage{s + 1}/block{b + 1}"
            if b == 0:
                conv(f"{pre}/shortcut", 1, cin, ch(4 * w))
            conv(f"{pre}/conv1", 1, cin, ch(w))
            conv(f"{pre}/conv2", 3, ch(w), ch(w))
            conv(f"{pre}/conv3", 1, ch(w), ch(4 * w))
            cin = ch(4 * w)
    out.append(("fc/kernel", (cin, classes)))
    out.append(("fc/bias", (classes,)))
    return out


def gpt2_shapes(d: int = 384, layers: int = 12, vocab: int = 21760, ctx: int = 1024):
    """GPT-2-small's layout (token and position embeddings; per layer 2 layernorms, qkv,
    attention projection and a 4x MLP, kernels and biases; a final layernorm) at width
    `d`: 148 leaves; 30.0M params with the defaults."""
    out = [("wte", (vocab, d)), ("wpe", (ctx, d))]
    for i in range(layers):
        p = f"h{i:02d}"
        out += [
            (f"{p}/ln_1/gamma", (d,)), (f"{p}/ln_1/beta", (d,)),
            (f"{p}/attn/qkv/kernel", (d, 3 * d)), (f"{p}/attn/qkv/bias", (3 * d,)),
            (f"{p}/attn/proj/kernel", (d, d)), (f"{p}/attn/proj/bias", (d,)),
            (f"{p}/ln_2/gamma", (d,)), (f"{p}/ln_2/beta", (d,)),
            (f"{p}/mlp/fc/kernel", (d, 4 * d)), (f"{p}/mlp/fc/bias", (4 * d,)),
            (f"{p}/mlp/proj/kernel", (4 * d, d)), (f"{p}/mlp/proj/bias", (d,)),
        ]
    out += [("ln_f/gamma", (d,)), ("ln_f/beta", (d,))]
    return out


def tree_shapes(name: str, quick: bool):
    if name == "leaf32m":
        return [("w", (1 << 20,) if quick else (32 << 20,))]
    if name == "resnet50":
        return resnet50_shapes(0.25, 100, (1, 1, 1, 1)) if quick else resnet50_shapes()
    if name == "gpt2":
        return gpt2_shapes(d=64, layers=4, vocab=1000, ctx=128) if quick else gpt2_shapes()
    if name == "small1000":
        n = 100 if quick else 1000
        return [(f"layer{i:04d}/kernel", (16, 32)) for i in range(n)]
    raise ValueError(f"unknown tree {name!r}; choose from {ALL_TREES}")


def tree_description(name: str, quick: bool) -> str:
    if quick:
        return {"leaf32m": "one 1M leaf (quick)",
                "resnet50": "ResNet-50, one block per stage, width 1/4 (quick)",
                "gpt2": "GPT-2 layout, 4 layers, d=64 (quick)",
                "small1000": "100 leaves of 16x32 (quick)"}[name]
    return {"leaf32m": "one 32M-element leaf",
            "resnet50": "ResNet-50: 53 convs + BN gamma/beta + dense 2048x1000",
            "gpt2": "GPT-2-small layout, 12 layers, d=384, vocab 21760, ctx 1024",
            "small1000": "1000 leaves of 16x32"}[name]


class HostTree:
    """Params and gradients of one tree, drawn once on the host with a fixed seed."""

    def __init__(self, name: str, quick: bool, seed: int = 0):
        self.name = name
        self.shapes = tree_shapes(name, quick)
        rng = np.random.default_rng([seed, ALL_TREES.index(name)])
        self.params = [(0.02 * rng.standard_normal(s, dtype=np.float32)) for _, s in self.shapes]
        self.grads = [(1e-3 * rng.standard_normal(s, dtype=np.float32)) for _, s in self.shapes]
        self.names = [n for n, _ in self.shapes]
        self.n_params = int(sum(int(np.prod(s)) for _, s in self.shapes))
        self.n_leaves = len(self.shapes)


def device_copy(x):
    """A device array that owns its buffer (never an alias of the host array)."""
    return jnp.array(x, copy=True)


# --------------------------------------------------------------------------- implementations
# Each builder does its (untimed) setup and returns (init, step): `init()` creates the
# optimizer state, `step()` runs one step and blocks until its outputs are ready. Every
# implementation waits on the updated params only, as a training loop would: they come out
# of the same executable as the state, and waiting on thousands of state leaves as well
# would time Python's walk over them rather than the step.

def build_optax(opt, tree: HostTree, grads):
    import optax

    tx = (optax.adam(ADAM["learning_rate"], b1=ADAM["beta_1"], b2=ADAM["beta_2"], eps=ADAM["epsilon"])
          if opt == "adam" else optax.sgd(SGDM["learning_rate"], momentum=SGDM["momentum"]))
    g = dict(zip(tree.names, grads))
    box = {"p": {n: device_copy(x) for n, x in zip(tree.names, tree.params)}}

    def fn(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    jstep = jax.jit(fn, donate_argnums=(0, 1))

    def init():
        box["s"] = tx.init(box["p"])

    def step():
        box["p"], box["s"] = jstep(box["p"], box["s"], g)
        jax.block_until_ready(box["p"])   # one executable: its params are ready last

    return init, step


KOPT_BUCKET_THRESHOLD = None   # --kopt-bucket-threshold; None: kopt's default


def _kopt_kwargs():
    if KOPT_BUCKET_THRESHOLD is None:
        return {}
    return {"bucket_threshold": KOPT_BUCKET_THRESHOLD}


def build_kopt(opt, tree: HostTree, grads):
    import kopt

    F = kopt.functional
    kw = _kopt_kwargs()
    tx = (F.adam(ADAM["learning_rate"], ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"], **kw)
          if opt == "adam" else F.sgd(SGDM["learning_rate"], momentum=SGDM["momentum"], **kw))
    g = dict(zip(tree.names, grads))
    box = {"p": {n: device_copy(x) for n, x in zip(tree.names, tree.params)}}

    def fn(p, s, g):
        u, s = tx.update(g, s, p)
        return F.apply_updates(p, u), s

    jstep = jax.jit(fn, donate_argnums=(0, 1))

    def init():
        box["s"] = tx.init(box["p"])

    def step():
        box["p"], box["s"] = jstep(box["p"], box["s"], g)
        jax.block_until_ready(box["p"])   # one executable: its params are ready last

    return init, step


def build_kopt_stateful(opt, tree: HostTree, grads):
    import kopt

    kw = _kopt_kwargs()
    o = kopt.optimizers.Adam(**ADAM, **kw) if opt == "adam" else kopt.optimizers.SGD(**SGDM, **kw)
    # Variable copies its input onto the device: hand it the host array (one copy).
    variables = [kopt.Variable(x, name=n) for n, x in zip(tree.names, tree.params)]

    def init():   # the optimizer builds itself in the first apply_gradients, as users do
        pass

    def step():
        o.apply_gradients(zip(grads, variables))
        jax.block_until_ready([v.value for v in variables])

    return init, step


def _keras_setup(opt, tree: HostTree):
    import keras

    o = keras.optimizers.Adam(**ADAM) if opt == "adam" else keras.optimizers.SGD(**SGDM)
    kvars = [keras.Variable(device_copy(x), name=n.replace("/", "_"))
             for n, x in zip(tree.names, tree.params)]
    return o, kvars


def build_keras_eager(opt, tree: HostTree, grads):
    o, kvars = _keras_setup(opt, tree)

    def init():   # Keras builds itself in the first apply_gradients
        pass

    def step():
        o.apply_gradients(zip(grads, kvars))
        jax.block_until_ready([v.value for v in kvars])

    return init, step


def build_keras_jit(opt, tree: HostTree, grads):
    o, kvars = _keras_setup(opt, tree)
    g = list(grads)
    box = {}

    def fn(opt_values, g, values):
        values, opt_values = o.stateless_apply(opt_values, g, values)
        return opt_values, values

    jstep = jax.jit(fn, donate_argnums=(0, 2))

    def init():
        o.build(kvars)
        box["t"] = [v.value for v in kvars]
        box["o"] = [v.value for v in o.variables]

    def step():
        box["o"], box["t"] = jstep(box["o"], g, box["t"])
        jax.block_until_ready(box["t"])   # one executable, as for the params above

    return init, step


def build_bound(opt, tree: HostTree, grads):
    """The pytree bound: `[p + g for ...]`, jitted, params donated (no optimizer state)."""
    g = dict(zip(tree.names, grads))
    box = {"p": {n: device_copy(x) for n, x in zip(tree.names, tree.params)}}
    jstep = jax.jit(lambda p, g: jax.tree.map(jnp.add, p, g), donate_argnums=0)

    def init():
        pass

    def step():
        box["p"] = jstep(box["p"], g)
        jax.block_until_ready(box["p"])

    return init, step


IMPL_MODULE = {"optax": "optax", "kopt": "kopt", "kopt-stateful": "kopt",
               "keras-jit": "keras", "keras-eager": "keras", "bound": "jax"}

BUILDERS = {
    "optax": build_optax,
    "kopt": build_kopt,
    "kopt-stateful": build_kopt_stateful,
    "keras-jit": build_keras_jit,
    "keras-eager": build_keras_eager,
    "bound": build_bound,
}


# --------------------------------------------------------------------------- memory
def _device_stats():
    try:
        return jax.devices()[0].memory_stats()
    except Exception:
        return None


def _proc_status(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


_LIBC = None


def _trim():
    """Collect garbage and hand freed heap back to the OS, so RSS reflects live memory."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except (OSError, AttributeError):
            _LIBC = False
    elif _LIBC:
        _LIBC.malloc_trim(0)


class MemoryProbe:
    """Peak memory of the steady-state steps of one row (see the module docstring)."""

    def __init__(self, grads_bytes: int, isolated: bool):
        self.grads_bytes = grads_bytes
        self.isolated = isolated
        stats = _device_stats()
        self.device = stats is not None and "peak_bytes_in_use" in stats
        _trim()
        if self.device:
            self.method = "device peak_bytes_in_use" + (" (own process)" if isolated else " (delta)")
            self.peak0 = stats["peak_bytes_in_use"]
            self.base = stats["bytes_in_use"]
        elif _proc_status("VmRSS") is not None and _reset_hwm():
            self.method = "host: live JAX arrays + rise of RSS high-water mark (VmHWM) over the steps"
        else:
            self.base = _maxrss()
            self.method = "host: getrusage ru_maxrss delta"

    def start_steady(self):
        """Called after the warm-up steps: the peak is of the steps from here on."""
        if not self.device and self.method.startswith("host: live"):
            _trim()
            self.live0 = live_bytes()
            self.rss0 = _proc_status("VmRSS")
            _reset_hwm()

    def peak(self):
        if self.device:
            p = _device_stats()["peak_bytes_in_use"]
            if self.isolated:
                return p
            if p <= self.peak0:   # hidden by an earlier, larger peak
                return None
            return p - self.base + self.grads_bytes
        if self.method.startswith("host: live"):
            # What the steps hold (the live arrays: params, grads, state) plus what they
            # allocate on top of it; compiled code and allocator slack stay out.
            return self.live0 + max(0, _proc_status("VmHWM") - self.rss0)
        d = _maxrss() - self.base
        return d + self.grads_bytes if d > 0 else None


def live_bytes() -> int:
    """Bytes of all live JAX arrays in the process (params, grads, state, leftovers)."""
    total = 0
    for a in jax.live_arrays():
        try:
            if not a.is_deleted():
                total += a.nbytes
        except Exception:
            pass
    return total


# --------------------------------------------------------------------------- measurement
def measure_bandwidth(n: int, cfg) -> dict:
    """XLA's own `a + 2*b` with `a` donated: 3 * 4 * n bytes per call."""
    f = jax.jit(lambda a, b: a + 2.0 * b, donate_argnums=0)
    a = jnp.zeros((n,), jnp.float32)
    b = jnp.full((n,), 1e-3, jnp.float32)
    for _ in range(3):
        a = f(a, b)
        a.block_until_ready()
    times = []
    start = time.perf_counter()
    while len(times) < max(cfg.steps, 10) and (len(times) < 10 or time.perf_counter() - start < cfg.budget):
        t = time.perf_counter()
        a = f(a, b)
        a.block_until_ready()
        times.append(time.perf_counter() - t)
    del a, b
    med = statistics.median(times)
    return {"elements": n, "bytes_per_call": 12 * n, "median_s": med,
            "bytes_per_s": 12 * n / med, "calls": len(times)}


def run_row(tree: HostTree, grads, opt: str, impl: str, cfg, isolated: bool) -> dict:
    row = {"tree": tree.name, "opt": opt, "impl": impl, "n_params": tree.n_params,
           "n_leaves": tree.n_leaves}
    try:
        # Import the implementation's modules first, so their memory is not the row's.
        __import__(IMPL_MODULE[impl])
        probe = MemoryProbe(4 * tree.n_params, isolated)
        row["memory_method"] = probe.method
        init, step = BUILDERS[impl](opt, tree, grads)
        t0 = time.perf_counter()
        init()
        step()
        row["first_step_s"] = time.perf_counter() - t0
        # A row whose warm step alone outlasts the budget (Keras eager on many leaves)
        # warms up once and takes the median of 3 steps, to keep the run short.
        min_steps = cfg.min_steps
        for _ in range(cfg.warmup):
            t = time.perf_counter()
            step()
            if cfg.budget > 0 and time.perf_counter() - t > cfg.budget:
                min_steps = min(min_steps, 3)
                break
        probe.start_steady()
        times = []
        start = time.perf_counter()
        while len(times) < cfg.steps and (
                len(times) < min_steps or cfg.budget <= 0
                or time.perf_counter() - start < cfg.budget):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        row.update(step_s=statistics.median(times), min_s=min(times),
                   mean_s=statistics.fmean(times), steps=len(times))
        row["peak_bytes"] = probe.peak()
        row["live_bytes"] = live_bytes()
        del init, step
    except Exception as e:  # record and go on: one broken row must not sink the run
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()
        print(f"  !! {tree.name}/{opt}/{impl} failed: {row['error']}", file=sys.stderr, flush=True)
    gc.collect()
    jax.clear_caches()
    return row


def _row_in_subprocess(tree_name, opt, impl, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_row",
           json.dumps({"tree": tree_name, "opt": opt, "impl": impl}),
           "--steps", str(args.steps), "--min-steps", str(args.min_steps),
           "--warmup", str(args.warmup), "--budget", str(args.budget), "--seed", str(args.seed)]
    if args.quick_trees:
        cmd.append("--quick-trees")
    if args.kopt_bucket_threshold is not None:
        cmd += ["--kopt-bucket-threshold", str(args.kopt_bucket_threshold)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@ROW "):
            if proc.stderr.strip():
                sys.stderr.write(proc.stderr)
            return json.loads(line[6:])
    tail = proc.stderr.strip().splitlines()[-20:]
    sys.stderr.write("\n".join(tail) + "\n")
    return {"tree": tree_name, "opt": opt, "impl": impl,
            "error": f"subprocess exited with {proc.returncode} and no result: "
                     + (tail[-1] if tail else ""),
            "traceback": "\n".join(tail)}


def _child(spec: dict, args) -> None:
    # Pay the process's one-time JIT start-up here, not in the row's first step.
    jax.jit(lambda x: x + 1)(jnp.zeros((), jnp.float32)).block_until_ready()
    tree = HostTree(spec["tree"], args.quick_trees, args.seed)
    grads = [device_copy(g) for g in tree.grads]
    jax.block_until_ready(grads)
    row = run_row(tree, grads, spec["opt"], spec["impl"], args, isolated=True)
    print("@@ROW " + json.dumps(row), flush=True)


# --------------------------------------------------------------------------- report
def _fmt(x, spec, missing="-"):
    return missing if x is None else format(x, spec)


def finish_rows(rows, bandwidth):
    optax_ms = {(r["tree"], r["opt"]): r["step_s"] for r in rows
                if r["impl"] == "optax" and "step_s" in r}
    kopt_ms = {(r["tree"], r["opt"]): r["step_s"] for r in rows
               if r["impl"] == "kopt" and "step_s" in r}
    bound_ms = {(r["tree"], r["opt"]): r["step_s"] for r in rows
                if r["impl"] == "bound" and "step_s" in r}
    for r in rows:
        if "step_s" in r:
            r["compile_s"] = max(r["first_step_s"] - r["step_s"], 0.0)
    optax_compile = {(r["tree"], r["opt"]): r["compile_s"] for r in rows
                     if r["impl"] == "optax" and "compile_s" in r}
    for r in rows:
        bpp = BYTES_PER_PARAM[r["opt"]]
        r["bytes_per_param"] = bpp
        r["floor_s"] = bpp * r["n_params"] / bandwidth
        r["ideal_bytes"] = 4 * r["n_params"] * (2 + STATE_PER_PARAM[r["opt"]])
        if "step_s" not in r:
            continue
        r["x_floor"] = r["step_s"] / r["floor_s"]
        base = optax_ms.get((r["tree"], r["opt"]))
        r["x_optax"] = r["step_s"] / base if base else None
        k = kopt_ms.get((r["tree"], r["opt"]))
        r["x_kopt"] = r["step_s"] / k if k else None
        b = bound_ms.get((r["tree"], r["opt"]))
        r["x_bound"] = r["step_s"] / b if b else None
        c = optax_compile.get((r["tree"], r["opt"]))
        r["compile_x_optax"] = r["compile_s"] / c if c else None
        r["x_ideal"] = (r["peak_bytes"] / r["ideal_bytes"]
                        if r.get("peak_bytes") is not None else None)
    return rows


def format_table(rows, trees_meta) -> str:
    head = (f"{'tree':<10} {'opt':<5} {'impl':<14} {'step ms':>9} {'floor ms':>9} {'x floor':>8} "
            f"{'x optax':>8} {'x bound':>8} {'1st step s':>10} {'compile x optax':>15} "
            f"{'peak MB':>9} {'x ideal':>8} {'steps':>5}")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        if r["tree"] != last:
            if last is not None:
                lines.append("")
            m = trees_meta[r["tree"]]
            lines.append(f"# {r['tree']}: {m['description']}; {m['n_params'] / 1e6:.2f}M params "
                         f"in {m['n_leaves']} leaves")
            last = r["tree"]
        if "error" in r:
            lines.append(f"{r['tree']:<10} {r['opt']:<5} {r['impl']:<14} ERROR {r['error'][:70]}")
            continue
        peak = r.get("peak_bytes")
        lines.append(
            f"{r['tree']:<10} {r['opt']:<5} {r['impl']:<14} {r['step_s'] * 1e3:>9.2f} "
            f"{r['floor_s'] * 1e3:>9.2f} {r['x_floor']:>8.2f} {_fmt(r.get('x_optax'), '>8.2f'):>8} "
            f"{_fmt(r.get('x_bound'), '>8.2f'):>8} {r['first_step_s']:>10.2f} "
            f"{_fmt(r.get('compile_x_optax'), '>15.2f'):>15} "
            f"{_fmt(None if peak is None else peak / MB, '>9.0f'):>9} "
            f"{_fmt(r.get('x_ideal'), '>8.2f'):>8} {r['steps']:>5}")
    return "\n".join(lines)


def format_targets(rows) -> str:
    """The issue's targets, read off this run's rows."""
    get = {(r["tree"], r["opt"], r["impl"]): r for r in rows if "step_s" in r}
    out = ["Targets (issue 5):"]
    for tree in ("leaf32m", "resnet50", "gpt2"):
        for opt in ALL_OPTS:
            r = get.get((tree, opt, "kopt"))
            if r:
                out.append(f"  kopt functional / floor  {tree:<9} {opt:<4}: {r['x_floor']:.2f}x  (target <= 1.25)")
    for opt in ALL_OPTS:
        r = get.get(("small1000", opt, "kopt"))
        if r and r.get("x_optax"):
            out.append(f"  optax / kopt functional  small1000 {opt:<4}: {1 / r['x_optax']:.1f}x faster "
                       f"(target >= 5); kopt / floor {r['x_floor']:.1f}x (stretch <= 3)")
    for (tree, opt, impl), r in get.items():
        if impl == "kopt-stateful" and r.get("x_kopt"):
            out.append(f"  kopt stateful / functional {tree:<9} {opt:<4}: {r['x_kopt']:.2f}x  (target <= 1.15)")
    for opt in ALL_OPTS:
        for impl in ("kopt", "kopt-stateful"):
            r = get.get(("small1000", opt, impl))
            if r:
                out.append(f"  first step, small1000 {opt:<4} {impl:<13}: {r['first_step_s']:.2f} s  (target <= 1 s)")
    for (tree, opt, impl), r in get.items():
        if impl == "kopt-stateful" and opt == "adam" and r.get("x_ideal"):
            out.append(f"  stateful Adam peak / (params+grads+state) {tree:<9}: {r['x_ideal']:.2f}x  "
                       "(target <= 1.10)")
    out.append("Targets (issue 17, kopt functional against optax in this run):")
    limits = {"small1000": 0.40, "resnet50": 1.00, "gpt2": 1.00, "leaf32m": 1.05}
    for tree, limit in limits.items():
        for opt in ALL_OPTS:
            r = get.get((tree, opt, "kopt"))
            if r and r.get("x_optax"):
                line = f"  step x optax {tree:<9} {opt:<4}: {r['x_optax']:.2f}x (target <= {limit:.2f})"
                if tree == "small1000" and r.get("compile_x_optax") is not None:
                    line += f"; compile x optax {r['compile_x_optax']:.2f}x (target <= 0.50)"
                if r.get("x_bound"):
                    line += f"; x bound {r['x_bound']:.2f}"
                out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _parse_list(text, allowed, what):
    if text is None:
        return list(allowed)
    items = [ALIASES.get(t.strip(), t.strip()) for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", help=f"comma-separated subset of {','.join(ALL_TREES)}")
    p.add_argument("--opts", help=f"comma-separated subset of {','.join(ALL_OPTS)}")
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(ALL_IMPLS)}")
    p.add_argument("--skip-keras", action="store_true", help="leave out keras-jit and keras-eager")
    p.add_argument("--steps", type=int, default=None,
                   help="at most this many timed steps per row (default 50; 5 with --quick)")
    p.add_argument("--min-steps", type=int, default=None,
                   help="at least this many timed steps per row (default 5; 2 with --quick)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed steps per row before stopping early, once --min-steps "
                        "are done; <= 0 always runs --steps (default 1.0; 0.1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after the first (default 2; 1 with --quick)")
    p.add_argument("--bw-elems", type=int, default=None,
                   help="float32 elements of the bandwidth kernel (default 64M on CPU, 256M on "
                        "accelerators; 4M with --quick)")
    p.add_argument("--isolate", choices=("auto", "on", "off"), default="auto",
                   help="run each row in its own process (auto: where the device has memory_stats)")
    p.add_argument("--kopt-bucket-threshold", type=int, default=None,
                   help="pass bucket_threshold to kopt (functional and stateful); default: "
                        "kopt's own default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small trees and few steps: a smoke test")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results.json; results-quick.json with --quick)")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    p.add_argument("--quick-trees", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    if args.steps is None:
        args.steps = 5 if q else 50
    if args.min_steps is None:
        args.min_steps = 2 if q else 5
    args.min_steps = min(args.min_steps, args.steps)
    if args.budget is None:
        args.budget = 0.1 if q else 1.0
    if args.warmup is None:
        args.warmup = 1 if q else 2
    args.quick_trees = args.quick_trees or q
    if args.out is None:
        args.out = os.path.join(_HERE, "results-quick.json" if q else "results.json")
    return args


def main(argv=None):
    global KOPT_BUCKET_THRESHOLD
    args = parse_args(argv)
    KOPT_BUCKET_THRESHOLD = args.kopt_bucket_threshold
    if args._row:
        return _child(json.loads(args._row), args)
    trees = _parse_list(args.trees, ALL_TREES, "trees")
    opts = _parse_list(args.opts, ALL_OPTS, "opts")
    impls = _parse_list(args.impls, ALL_IMPLS, "impls")
    if args.skip_keras:
        impls = [i for i in impls if not i.startswith("keras")]
    import importlib.util

    missing = sorted({IMPL_MODULE[i] for i in impls
                      if importlib.util.find_spec(IMPL_MODULE[i]) is None})
    if missing:
        print(f"not installed, so left out: {missing} (pip install -e '.[bench]')", file=sys.stderr)
        impls = [i for i in impls if IMPL_MODULE[i] not in missing]
    t_start = time.perf_counter()

    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    stats = _device_stats()
    isolate = (args.isolate == "on") or (args.isolate == "auto" and stats is not None)
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for mod in ("jaxlib", "kopt", "optax", "keras"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    print(f"devices: {jax.devices()}  ({getattr(dev, 'device_kind', dev.platform)})")
    import kopt.functional

    bucket = (args.kopt_bucket_threshold if args.kopt_bucket_threshold is not None
              else kopt.functional.DEFAULT_BUCKET_THRESHOLD)
    versions["kopt_bucket_threshold"] = bucket
    versions["kopt_git"] = git_rev(_ROOT)
    load0 = _loadavg()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; host: {platform.machine()}, {os.cpu_count()} CPUs, load average {load0}")

    n_bw = args.bw_elems or ((4 << 20) if args.quick else (64 << 20) if on_cpu else (256 << 20))
    bw = measure_bandwidth(n_bw, args)
    print(f"bandwidth: {bw['bytes_per_s'] / 1e9:.1f} GB/s  (XLA a + 2*b, donated, "
          f"{n_bw / (1 << 20):.0f}M f32, {bw['median_s'] * 1e3:.3f} ms median of {bw['calls']})")
    print(f"rows: trees {trees}, opts {opts}, impls {impls}; "
          f"{'one process per row' if isolate else 'in process'}", flush=True)

    rows, trees_meta = [], {}
    for tree_name in trees:
        tree = HostTree(tree_name, args.quick_trees, args.seed)
        trees_meta[tree_name] = {"description": tree_description(tree_name, args.quick_trees),
                                 "n_params": tree.n_params, "n_leaves": tree.n_leaves}
        grads = None
        if not isolate:
            grads = [device_copy(g) for g in tree.grads]
            jax.block_until_ready(grads)
        for opt in opts:
            for impl in impls:
                t = time.perf_counter()
                if isolate:
                    row = _row_in_subprocess(tree_name, opt, impl, args)
                else:
                    row = run_row(tree, grads, opt, impl, args, isolated=False)
                row.setdefault("n_params", tree.n_params)
                row.setdefault("n_leaves", tree.n_leaves)
                row["row_wall_s"] = time.perf_counter() - t
                rows.append(row)
                if "error" in row:
                    msg = "ERROR " + row["error"][:100]
                else:
                    msg = (f"{row['step_s'] * 1e3:9.2f} ms  first {row['first_step_s']:6.2f} s  "
                           f"({row['steps']} steps)")
                print(f"  {tree_name:<10} {opt:<5} {impl:<14} {msg}   [{row['row_wall_s']:.1f} s]",
                      flush=True)
                # Keep what is done on disk, in case the run is cut short.
                write_json(args.out, rows, bw, trees_meta, versions, isolate, load0,
                           time.perf_counter() - t_start, args, complete=False)
        del grads, tree
        gc.collect()

    total = time.perf_counter() - t_start
    result = write_json(args.out, rows, bw, trees_meta, versions, isolate, load0, total, args,
                        complete=True)
    print()
    print(f"device: {jax.devices()}; jax {jax.__version__}; "
          f"bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s; "
          f"peak memory: {', '.join(result['meta']['memory_method'])}")
    print(result["table"])
    print()
    if args.quick_trees:
        print("(--quick: small stand-in trees, so the targets below do not apply)")
    print(format_targets(rows))
    print(f"\ntotal {total:.0f} s; load average at start {load0}, at end {_loadavg()}")
    print(f"wrote {args.out}")


def write_json(path, rows, bw, trees_meta, versions, isolate, load0, total, args, complete):
    """Write the results so far (rows are finished in place); returns the JSON object."""
    finish_rows(rows, bw["bytes_per_s"])
    dev = jax.devices()[0]
    methods = sorted({r["memory_method"] for r in rows if "memory_method" in r})
    result = {
        "meta": {
            "complete": complete,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": getattr(dev, "device_kind", None),
            "platform": dev.platform,
            "versions": versions,
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "loadavg_start": load0, "loadavg_end": _loadavg()},
            "bandwidth": bw,
            "bytes_per_param": BYTES_PER_PARAM,
            "memory_method": methods,
            "isolated_rows": isolate,
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "trees": trees_meta,
            "total_s": total,
        },
        "rows": [{k: v for k, v in r.items() if k != "traceback"} for r in rows],
        "errors": [{"tree": r["tree"], "opt": r["opt"], "impl": r["impl"],
                    "traceback": r.get("traceback", r["error"])} for r in rows if "error" in r],
        "table": format_table(rows, trees_meta),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
