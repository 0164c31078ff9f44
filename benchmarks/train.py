#!/usr/bin/env python
"""The whole training step (forward, backward, update), side by side, on real models.

Run from the repository root::

    pip install -e ".[bench]"
    python benchmarks/train.py            # full run, a few minutes on a 2-core CPU
    python benchmarks/train.py --quick    # tiny models, few steps: a smoke test (< 30 s)
    python benchmarks/train.py --models cnn,transformer --impls optax,kopt,kopt-minimize

Models (nothing is downloaded):

- ``cnn``: a flax.nnx CNN (two 3x3 convolutions with average pooling, two dense layers)
  on scikit-learn's bundled ``load_digits`` (1797 8x8 images, 10 classes), batch 64,
  softmax cross-entropy.
- ``transformer``: a pre-LayerNorm character (byte) transformer, plain JAX, about 2M
  parameters (4 layers, d=192, 4 heads, context 64, batch 8), next-byte cross-entropy on
  the Python standard library's own source files (``sysconfig.get_paths()["stdlib"]``,
  the ``*.py`` files at its top level in name order, concatenated).
- ``keras-fit``: the same CNN as a Keras 3 model trained with ``model.fit`` on digits
  (batch 64, no shuffling).

Implementations (``--impls``) of each training step, all Adam (lr 1e-3, betas 0.9/0.999,
epsilon 1e-7; optax adds epsilon after bias correction, kopt and Keras before):

- ``optax``: ``jax.jit`` of ``value_and_grad`` + ``optax.adam`` update + ``apply_updates``,
  params and optimizer state donated: the baseline of the ``x optax`` column;
- ``kopt``: the same hand-jitted step with ``kopt.functional.adam``;
- ``kopt-apply``: the stateful facade as most loops use it, ``jax.jit(value_and_grad)``
  then ``opt.apply_gradients(zip(grads, variables))``: two compiled calls per step;
- ``kopt-minimize``: ``opt.minimize(loss_fn, variables, batch...)``: one call, gradient
  and update fused and donated;
- ``keras``: Keras's ``keras.optimizers.Adam`` (``stateless_apply`` in the same hand-jitted
  step on the cnn and the transformer; ``model.fit`` on keras-fit);
- ``kopt-keras``: ``model.fit`` with ``kopt.interop.keras.wrap(kopt.optimizers.Adam(...))``
  (keras-fit only). On keras-fit the baseline is ``keras``.

With the nnx model the stateful rows use ``kopt.interop.flax.variables(model)`` and update
the module in place; these variables are foreign, so by default their buffers are copied
rather than donated (``donate_foreign_variables``, README "Buffer ownership").

Every implementation starts from the same initial parameters and sees the same batches in
the same order. Steps are timed in interleaved rounds (each round runs ``--round`` steps of
every implementation in turn, a different one first each round), each step followed by
``jax.block_until_ready`` on its loss and parameters, so a loaded machine slows all rows
alike. Columns:

- ``step ms``: the median step; ``x base``: over the baseline's median in the same run;
- ``1st step s``: creating the optimizer state, tracing, compiling and the first step
  (keras-fit: the first ``fit`` epoch, less the rest of its steps at the median);
- ``final loss``: the loss of the last step (keras-fit: the mean loss of the last epoch).

Target (#17): ``kopt-minimize`` within 1.10x of ``kopt`` (the hand-jitted functional step)
on the cnn and the transformer. The table and JSON (``--out``; default
``benchmarks/results-train.json``, ``results-train-quick.json`` with ``--quick``) say
whether it is met.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"   # before keras is first imported
if "--quick" in __import__("sys").argv[1:]:
    # A smoke test: compile fast (XLA's CPU backend unoptimised); its timings mean nothing.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import argparse
import glob
import json
import platform
import statistics
import sys
import sysconfig
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:  # run the working tree's kopt even when it is not installed
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_common import git_rev  # noqa: E402

ADAM = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-7)
ALL_MODELS = ("cnn", "transformer", "keras-fit")
ALL_IMPLS = ("optax", "kopt", "kopt-apply", "kopt-minimize", "kopt-minimize-nnx", "keras",
             "kopt-keras")
JIT_IMPLS = ("optax", "kopt", "kopt-apply", "kopt-minimize", "kopt-minimize-nnx", "keras")
FIT_IMPLS = ("keras", "kopt-keras")
TARGET = 1.10


# --------------------------------------------------------------------------- data
def digits(quick: bool):
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]   # (n, 8, 8, 1)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    return (x[:256], y[:256]) if quick else (x, y)


def stdlib_text(n_bytes: int) -> np.ndarray:
    """The first `n_bytes` of the standard library's top-level `*.py` files, as bytes."""
    chunks, total = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        with open(path, "rb") as f:
            data = f.read()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:n_bytes], np.uint8).astype(np.int32)


def batches_digits(x, y, n_steps: int, batch: int):
    """The minibatches of `n_steps` steps, epoch after epoch in a fixed order, on device."""
    per_epoch = len(y) // batch
    out = []
    for s in range(n_steps):
        i = (s % per_epoch) * batch
        out.append((jax.device_put(x[i:i + batch]), jax.device_put(y[i:i + batch])))
    return out


def batches_text(text: np.ndarray, n_steps: int, batch: int, ctx: int):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n_steps):
        starts = rng.integers(0, len(text) - ctx - 1, batch)
        out.append((jax.device_put(np.stack([text[s:s + ctx + 1] for s in starts])),))
    return out


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


# --------------------------------------------------------------------------- models
def make_cnn(seed: int = 0):
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
            self.dense1 = nnx.Linear(2 * 2 * 64, 128, rngs=rngs)
            self.dense2 = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
            x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
            x = nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))
            return self.dense2(x)

    return CNN(nnx.Rngs(seed))


class CnnTask:
    """The nnx CNN: a pure loss of a params pytree, and the module for the stateful rows."""

    name = "cnn"

    def __init__(self, quick: bool, n_steps: int):
        from flax import nnx
        self.nnx = nnx
        x, y = digits(quick)
        self.batches = batches_digits(x, y, n_steps, 64)
        graphdef, params, rest = nnx.split(make_cnn(), nnx.Param, ...)
        self.graphdef, self.rest = graphdef, rest
        self.treedef = jax.tree.structure(params)
        self.n_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
        self.describe = (f"flax.nnx CNN on sklearn digits ({len(y)} images), batch 64, "
                         f"{self.n_params / 1e6:.3f}M params")

    def init_params(self):
        """Fresh params (pytree of arrays), the same every call."""
        return self.nnx.split(make_cnn(), self.nnx.Param, ...)[1]

    def loss(self, params, x, y):
        model = self.nnx.merge(self.graphdef, params, self.rest)
        return cross_entropy(model(x), y)

    def stateful(self, nnx_variables: bool = False):
        """`(variables, loss_fn, extra_args)` for the stateful facade: `kopt.Variable`s
        holding the params (a list, in the leaf order of the params' State), or, with
        `nnx_variables`, a fresh module's own parameters (`kopt.interop.flax.variables`),
        updated in place. `loss_fn` is the docstring's nnx pattern either way."""
        import kopt
        import kopt.interop.flax
        nnx, graphdef, treedef = self.nnx, self.graphdef, self.treedef

        def loss_fn(values, rest, x, y):
            m = nnx.merge(graphdef, jax.tree.unflatten(treedef, values), rest)
            return cross_entropy(m(x), y)

        if not nnx_variables:
            variables = [kopt.Variable(x) for x in jax.tree.leaves(self.init_params())]
            return variables, loss_fn, (self.rest,)
        model = make_cnn()
        return kopt.interop.flax.variables(model), loss_fn, (nnx.state(model, nnx.Not(nnx.Param)),)


def layer_norm(x, scale, bias):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias


def transformer_params(vocab, d, layers, ctx, seed=0):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    p = {"tok": normal(vocab, d), "pos": normal(ctx, d),
         "ln_f": {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)},
         "head": normal(d, vocab)}
    for i in range(layers):
        p[f"layer{i}"] = {
            "ln1": {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)},
            "qkv": normal(d, 3 * d), "proj": normal(d, d),
            "ln2": {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)},
            "fc1": normal(d, 4 * d), "b1": np.zeros(4 * d, np.float32),
            "fc2": normal(4 * d, d), "b2": np.zeros(d, np.float32)}
    return p


class TransformerTask:
    name = "transformer"

    def __init__(self, quick: bool, n_steps: int):
        self.vocab = 256
        self.d, self.layers, self.heads, self.ctx, batch = (
            (32, 1, 2, 32, 4) if quick else (192, 4, 4, 64, 8))
        text = stdlib_text(200_000 if quick else 2_000_000)
        self.batches = batches_text(text, n_steps, batch, self.ctx)
        self.n_params = sum(int(np.size(p)) for p in jax.tree.leaves(self.host_params()))
        self.describe = (f"byte transformer, {self.layers} layers, d={self.d}, context "
                         f"{self.ctx}, batch {batch}, on {len(text) / 1e6:.1f} MB of stdlib "
                         f"source; {self.n_params / 1e6:.3f}M params")

    def host_params(self):
        return transformer_params(self.vocab, self.d, self.layers, self.ctx)

    def init_params(self):
        return jax.tree.map(jnp.asarray, self.host_params())

    def loss(self, p, tokens):
        x, labels = tokens[:, :-1], tokens[:, 1:]
        b, t = x.shape
        h = p["tok"][x] + p["pos"][None, :t]
        mask = jnp.tril(jnp.ones((t, t), bool))
        hd = self.d // self.heads
        for i in range(self.layers):
            lp = p[f"layer{i}"]
            a = layer_norm(h, lp["ln1"]["scale"], lp["ln1"]["bias"])
            q, k, v = jnp.split(a @ lp["qkv"], 3, axis=-1)
            q, k, v = (z.reshape(b, t, self.heads, hd) for z in (q, k, v))
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(hd))
            s = jnp.where(mask[None, None], s, np.float32(-1e9))
            o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
            h = h + o.reshape(b, t, self.d) @ lp["proj"]
            a = layer_norm(h, lp["ln2"]["scale"], lp["ln2"]["bias"])
            h = h + jax.nn.gelu(a @ lp["fc1"] + lp["b1"]) @ lp["fc2"] + lp["b2"]
        h = layer_norm(h, p["ln_f"]["scale"], p["ln_f"]["bias"])
        return cross_entropy(h @ p["head"], labels)

    def stateful(self, nnx_variables: bool = False):
        import kopt
        variables = jax.tree.map(kopt.Variable, self.host_params())
        return variables, self.loss, ()


# --------------------------------------------------------------------------- steps
class Runner:
    """One implementation on one task: `init()` (state and first step not included),
    `step(batch) -> loss`, and `sync()` (what a timed step waits for)."""


def jitted_runner(task, init_state, update):
    """A hand-jitted, donated `(params, state, *batch) -> (params, state, loss)` step."""

    def step_fn(params, state, *batch):
        loss, grads = jax.value_and_grad(task.loss)(params, *batch)
        params, state = update(grads, state, params)
        return params, state, loss

    r = Runner()
    step = jax.jit(step_fn, donate_argnums=(0, 1))
    box = {}

    def init():
        box["params"] = task.init_params()
        box["state"] = init_state(box["params"])

    def run(batch):
        box["params"], box["state"], loss = step(box["params"], box["state"], *batch)
        return loss

    r.init, r.step, r.sync = init, run, lambda: box["params"]
    return r


def optax_update():
    import optax
    tx = optax.adam(ADAM["learning_rate"], b1=ADAM["b1"], b2=ADAM["b2"], eps=ADAM["eps"])

    def update(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return tx.init, update


def kopt_update():
    import kopt
    tx = kopt.functional.adam(ADAM["learning_rate"], beta_1=ADAM["b1"], beta_2=ADAM["b2"],
                              epsilon=ADAM["eps"])

    def update(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return kopt.functional.apply_updates(params, updates), state

    return tx.init, update


def keras_update(task):
    import keras
    opt = keras.optimizers.Adam(ADAM["learning_rate"], beta_1=ADAM["b1"], beta_2=ADAM["b2"],
                                epsilon=ADAM["eps"])
    box = {}

    def init(params):
        leaves, box["treedef"] = jax.tree.flatten(params)
        opt.build([keras.Variable(x) for x in leaves])
        return [v.value for v in opt.variables]

    def update(grads, state, params):
        leaves, treedef = jax.tree.flatten(params)
        new, state = opt.stateless_apply(state, jax.tree.leaves(grads), leaves)
        return jax.tree.unflatten(treedef, new), state

    return init, update


def kopt_adam():
    import kopt
    return kopt.optimizers.Adam(ADAM["learning_rate"], beta_1=ADAM["b1"], beta_2=ADAM["b2"],
                                epsilon=ADAM["eps"])


def stateful_runner(task, fused: bool, nnx_variables: bool = False):
    r = Runner()
    box = {}

    def init():
        box["vars"], box["loss_fn"], box["extra"] = task.stateful(nnx_variables)
        box["leaves"] = jax.tree.leaves(box["vars"], is_leaf=lambda v: hasattr(v, "assign"))
        box["opt"] = kopt_adam()
        box["opt"].build(box["leaves"])
        box["vag"] = jax.jit(jax.value_and_grad(box["loss_fn"]))

    def run_minimize(batch):
        return box["opt"].minimize(box["loss_fn"], box["vars"], *box["extra"], *batch)

    def run_apply(batch):
        values = jax.tree.map(lambda v: v.value, box["vars"],
                              is_leaf=lambda v: hasattr(v, "assign"))
        loss, grads = box["vag"](values, *box["extra"], *batch)
        box["opt"].apply_gradients(zip(jax.tree.leaves(grads), box["leaves"]))
        return loss

    r.init, r.step = init, (run_minimize if fused else run_apply)
    r.sync = lambda: box["opt"].iterations.value
    return r


def make_runner(task, impl):
    if impl == "optax":
        return jitted_runner(task, *optax_update())
    if impl == "kopt":
        return jitted_runner(task, *kopt_update())
    if impl == "keras":
        return jitted_runner(task, *keras_update(task))
    return stateful_runner(task, fused=impl != "kopt-apply", nnx_variables=impl == "kopt-minimize-nnx")


def time_jit_task(task, impls, args, rounds: int):
    """`rounds` interleaved rounds over `impls`; returns a row per implementation."""
    runners, rows = {}, {}
    # Trace once first, so that the first row does not pay the libraries' one-time costs.
    jax.make_jaxpr(jax.value_and_grad(task.loss))(task.init_params(), *task.batches[0])
    for impl in impls:
        r = runners[impl] = make_runner(task, impl)
        t0 = time.perf_counter()
        r.init()
        loss = r.step(task.batches[0])
        jax.block_until_ready((loss, r.sync()))
        rows[impl] = {"model": task.name, "impl": impl,
                      "first_step_s": time.perf_counter() - t0, "times": [], "loss": loss}
    step = 1
    for _ in range(args.warmup):
        for impl in impls:
            jax.block_until_ready((runners[impl].step(task.batches[step]), runners[impl].sync()))
        step += 1
    for n in range(rounds):
        for impl in impls[n % len(impls):] + impls[:n % len(impls)]:   # each goes first in turn
            r, row = runners[impl], rows[impl]
            for s in range(step, step + args.round):
                t0 = time.perf_counter()
                loss = r.step(task.batches[s])
                jax.block_until_ready((loss, r.sync()))
                row["times"].append(time.perf_counter() - t0)
                row["loss"] = loss
        step += args.round
    for row in rows.values():
        row["steps"] = step
        row["final_loss"] = float(row.pop("loss"))
    return list(rows.values())


# --------------------------------------------------------------------------- keras fit
def keras_cnn():
    import keras
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10)])


def time_keras_fit(impls, args):
    import keras

    import kopt
    import kopt.interop.keras
    x, y = digits(args.quick)
    batch = 64
    steps_per_epoch = -(-len(y) // batch)
    models, rows = {}, {}
    for impl in impls:
        keras.utils.set_random_seed(0)
        model = keras_cnn()
        opt = (keras.optimizers.Adam(ADAM["learning_rate"], beta_1=ADAM["b1"],
                                     beta_2=ADAM["b2"], epsilon=ADAM["eps"])
               if impl == "keras" else kopt.interop.keras.wrap(kopt_adam()))
        model.compile(optimizer=opt,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models[impl] = model
        rows[impl] = {"model": "keras-fit", "impl": impl, "times": [], "epochs": []}
    for _ in range(args.epochs):
        for impl in impls:
            t0 = time.perf_counter()
            hist = models[impl].fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            rows[impl]["epochs"].append(time.perf_counter() - t0)
            rows[impl]["final_loss"] = float(hist.history["loss"][-1])
    for row in rows.values():
        epochs = row.pop("epochs")
        per_step = statistics.median(epochs[1:]) / steps_per_epoch
        row["times"] = [e / steps_per_epoch for e in epochs[1:]]
        row["first_step_s"] = epochs[0] - (steps_per_epoch - 1) * per_step
        row["steps"] = args.epochs * steps_per_epoch
    return list(rows.values())


# --------------------------------------------------------------------------- report
def finish(rows):
    base = {}
    for row in rows:
        times = row.pop("times")
        row["step_ms"] = 1e3 * statistics.median(times)
        row["timed_steps"] = len(times)
    for row in rows:
        want = "keras" if row["model"] == "keras-fit" else "optax"
        base.setdefault(row["model"], {})[row["impl"]] = row["step_ms"]
        row["baseline"] = want
    for row in rows:
        b = base[row["model"]].get(row["baseline"])
        row["x_base"] = None if b is None else row["step_ms"] / b
        k = base[row["model"]].get("kopt")
        row["x_kopt"] = None if k is None or row["model"] == "keras-fit" else row["step_ms"] / k
    return rows


def targets(rows):
    out = []
    for model in ("cnn", "transformer"):
        r = {row["impl"]: row for row in rows if row["model"] == model}
        if "kopt-minimize" in r and "kopt" in r:
            ratio = r["kopt-minimize"]["step_ms"] / r["kopt"]["step_ms"]
            out.append({"model": model, "what": "kopt-minimize / kopt (hand-jitted)",
                        "ratio": ratio, "target": TARGET, "met": ratio <= TARGET})
    return out


def format_table(rows, meta) -> str:
    head = (f"{'model':12} {'impl':17} {'step ms':>9} {'x base':>7} {'x kopt':>7} "
            f"{'1st step s':>10} {'final loss':>10} {'steps':>6}")
    lines = [head, "-" * len(head)]
    model = None
    for row in rows:
        if row["model"] != model:
            model = row["model"]
            lines.append(f"# {model}: {meta['models'].get(model, '')}; baseline {row['baseline']}")
        xb = "-" if row["x_base"] is None else f"{row['x_base']:.3f}"
        xk = "-" if row["x_kopt"] is None else f"{row['x_kopt']:.3f}"
        lines.append(f"{row['model']:12} {row['impl']:17} {row['step_ms']:9.3f} {xb:>7} "
                     f"{xk:>7} {row['first_step_s']:10.2f} {row['final_loss']:10.4f} "
                     f"{row['steps']:6d}")
    for t in meta["targets"]:
        lines.append(f"target {t['model']}: {t['what']} = {t['ratio']:.3f} "
                     f"(<= {t['target']:.2f}: {'met' if t['met'] else 'NOT met'})"
                     + ("; --quick: unoptimised XLA, a few steps, not a measurement"
                        if meta["quick"] else ""))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(ALL_IMPLS)}")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 300 on the cnn, 60 on the transformer; 3 "
                        "with --quick)")
    p.add_argument("--round", type=int, default=None,
                   help="steps of each implementation per round (default 1; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after the first (default 3; 1 with --quick)")
    p.add_argument("--epochs", type=int, default=None,
                   help="keras-fit epochs, the first untimed (default 8; 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models, few steps, unoptimised XLA, no keras row on the cnn and "
                        "transformer: a smoke test")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/"
                   "results-train.json; results-train-quick.json with --quick)")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (3 if q else None)
    args.round = args.round or (2 if q else 1)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.epochs = max(2, args.epochs or (3 if q else 8))
    # --quick leaves Keras's optimizer out of the cnn and transformer (it keeps keras-fit)
    # unless --impls names it.
    args.keras_jit = not q or args.impls is not None
    for name, allowed in (("models", ALL_MODELS), ("impls", ALL_IMPLS)):
        text = getattr(args, name)
        items = list(allowed) if text is None else [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad:
            raise SystemExit(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        setattr(args, name, items)
    if args.out is None:
        args.out = os.path.join(_HERE, "results-train-quick.json" if q else "results-train.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    rows, models = [], {}
    for name in args.models:
        if name == "keras-fit":
            impls = [i for i in args.impls if i in FIT_IMPLS]
            if impls:
                models[name] = "Keras 3 model.fit, the same CNN on digits, batch 64"
                rows += time_keras_fit(impls, args)
            continue
        impls = [i for i in args.impls if i in JIT_IMPLS
                 and not (i == "kopt-minimize-nnx" and name != "cnn")
                 and not (i == "keras" and not args.keras_jit)]
        if not impls:
            continue
        rounds = args.rounds or (300 if name == "cnn" else 60)   # the cnn's steps are short
        n_steps = 1 + args.warmup + rounds * args.round
        task = (CnnTask if name == "cnn" else TransformerTask)(args.quick, n_steps)
        models[name] = task.describe
        print(f"# {name}: {task.describe}", flush=True)
        rows += time_jit_task(task, impls, args, rounds)
    rows = finish(rows)
    import keras
    import optax

    import kopt
    meta = {
        "what": "whole training step (forward, backward, update), interleaved rounds",
        "models": models, "quick": args.quick, "rounds": args.rounds or {"cnn": 300, "transformer": 60},
        "round": args.round,
        "warmup": args.warmup, "epochs": args.epochs,
        "devices": [str(d) for d in jax.devices()][:1] + ([f"... {jax.device_count()} in all"]
                                                          if jax.device_count() > 1 else []),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"jax": jax.__version__, "optax": optax.__version__,
                     "keras": keras.__version__, "kopt": getattr(kopt, "__version__", None)},
        "kopt_rev": git_rev(_ROOT), "loadavg": list(os.getloadavg()),
        "seconds": time.perf_counter() - start,
    }
    meta["targets"] = targets(rows)
    table = format_table(rows, meta)
    print(table)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out} in {meta['seconds']:.1f} s")
    return rows, meta


if __name__ == "__main__":
    main()
