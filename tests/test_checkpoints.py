"""Checkpoints (issue 6, section 4).

- orbax-checkpoint saves and restores the stateful optimizer's pytree state (kopt's
  `Packed` slots, with buckets, and an optax state behind `from_transform`), and the
  restored run continues bit for bit;
- so does `np.savez` of `get_weights()`, on a layout with scalars and optional slots;
- `set_weights` takes the list tf.keras's legacy (OptimizerV2) `get_weights()` produced,
  for Dense(10) on 20 inputs (`tests/data/legacy_weight_layout.json`). The run then
  continues as the legacy optimizer would have where its formula is Keras 3's, and as
  Keras 3 does where they differ (RMSprop without momentum, Adagrad, Nadam); each side is
  a float64 NumPy reference written from the two formulas.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.stateful.optimizer import Optimizer

SHAPES = {"kernel": (20, 10), "bias": (10,)}


def grads_seq(steps, seed):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(steps)]


def make_variables(values=None):
    if values is None:
        kernel = np.random.default_rng(0).standard_normal((20, 10)).astype(np.float32) * 0.1
        values = {"kernel": kernel, "bias": np.zeros((10,), np.float32)}
    return [kopt.Variable(values[k], name=k) for k in SHAPES]


def run(opt, variables, seq):
    for g in seq:
        opt.apply_gradients(zip([g[k] for k in SHAPES], variables))


def assert_same_run(a_opt, a_vars, b_opt, b_vars):
    for a, b in zip(a_vars, b_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    a_weights, b_weights = a_opt.get_weights(), b_opt.get_weights()
    assert len(a_weights) == len(b_weights)
    for a, b in zip(a_weights, b_weights):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# orbax


def _optax_adam():
    optax = pytest.importorskip("optax")
    return Optimizer.from_transform(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05)))


ORBAX_CASES = {
    # Buckets of small leaves, EMA, None fields: every kind of node in kopt's state.
    "kopt_adam_buckets_ema": lambda: kopt.optimizers.Adam(0.05, bucket_threshold=64, use_ema=True),
    # Defaults (buckets on every backend), bucketing off, and Muon's empty second moments
    # (issue 14, item 1).
    "kopt_adam_defaults": lambda: kopt.optimizers.Adam(0.05),
    "kopt_adam_no_buckets": lambda: kopt.optimizers.Adam(0.05, bucket_threshold=0),
    "kopt_muon_defaults": lambda: kopt.optimizers.Muon(0.05),
    "optax_chain": _optax_adam,
}


@pytest.mark.parametrize("case", sorted(ORBAX_CASES))
def test_orbax_round_trip_of_the_state_resumes_bit_for_bit(case, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    seq = grads_seq(4, seed=1)
    with jax.numpy_dtype_promotion("standard" if case.startswith("optax") else "strict"):
        first, first_vars = ORBAX_CASES[case](), make_variables()
        run(first, first_vars, seq[:2])
        checkpointer = ocp.StandardCheckpointer()
        path = tmp_path / "step_2"
        checkpointer.save(path, {"params": [v.value for v in first_vars], "optimizer": first.state})
        checkpointer.wait_until_finished()
        saved_structure = jax.tree.structure(first.state)
        run(first, first_vars, seq[2:])   # the uninterrupted run

        # A fresh process: variables of the right shapes, an optimizer built on them, and
        # its state as the restore target (orbax needs it to rebuild kopt's pytree nodes).
        resumed = ORBAX_CASES[case]()
        resumed_vars = [kopt.Variable(jnp.zeros(s, jnp.float32), name=k) for k, s in SHAPES.items()]
        resumed.build(resumed_vars)
        target = {"params": [v.value for v in resumed_vars], "optimizer": resumed.state}
        restored = checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
        checkpointer.close()
        assert jax.tree.structure(restored["optimizer"]) == saved_structure
        for v, value in zip(resumed_vars, restored["params"]):
            v.assign(value)
        resumed.state = restored["optimizer"]
        assert int(resumed.iterations) == 2

        run(resumed, resumed_vars, seq[2:])
    assert_same_run(resumed, resumed_vars, first, first_vars)


# --------------------------------------------------------------------------------------
# np.savez of get_weights


def test_savez_of_get_weights_resumes_bit_for_bit(tmp_path):
    # Nadam's scalar momentum_cache, accumulation's micro_step and accum, and the EMA slot;
    # the checkpoint falls between two accumulated calls.
    def make():
        return kopt.optimizers.Nadam(0.05, use_ema=True, gradient_accumulation_steps=2)

    seq = grads_seq(5, seed=2)
    first, first_vars = make(), make_variables()
    run(first, first_vars, seq[:3])
    np.savez(tmp_path / "optimizer.npz", *first.get_weights())
    np.savez(tmp_path / "params.npz", **{v.name: v.numpy() for v in first_vars})
    run(first, first_vars, seq[3:])   # the uninterrupted run

    with np.load(tmp_path / "params.npz") as f:
        resumed_vars = make_variables({k: f[k] for k in SHAPES})
    resumed = make()
    resumed.build(resumed_vars)
    with np.load(tmp_path / "optimizer.npz") as f:
        resumed.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])
    assert int(resumed.iterations) == 1   # 3 calls, accumulating 2 per update
    run(resumed, resumed_vars, seq[3:])
    assert_same_run(resumed, resumed_vars, first, first_vars)


# --------------------------------------------------------------------------------------
# Legacy tf.keras (OptimizerV2) weights.

LAYOUT_PATH = pathlib.Path(__file__).parent / "data" / "legacy_weight_layout.json"
LR = 0.05
EPS = 0.1   # large, so that where epsilon sits shows above float32 rounding
B1, B2 = 0.9, 0.999
LEGACY_STEPS, MORE_STEPS = 5, 3


class Case(NamedTuple):
    make: Callable[[], Optimizer]
    slots: dict[str, float]   # legacy slot name -> initial value
    step: Callable            # legacy update: (w, g, slots, t, shared) -> new w (float64)
    advance: Callable | None = None   # legacy once-per-step update of the shared scalars
    keras3_step: Callable | None = None     # Keras 3's update where it is not the legacy one
    keras3_advance: Callable | None = None


def adam_step(amsgrad):
    def step(w, g, s, t, shared):
        s["m"] = B1 * s["m"] + (1 - B1) * g
        s["v"] = B2 * s["v"] + (1 - B2) * g * g
        v = s["v"]
        if amsgrad:
            s["vhat"] = np.maximum(s["vhat"], s["v"])
            v = s["vhat"]
        return w - LR * np.sqrt(1 - B2**t) / (1 - B1**t) * s["m"] / (np.sqrt(v) + EPS)

    return step


def sgd_step(w, g, s, t, shared):
    s["momentum"] = 0.9 * s["momentum"] - LR * g
    return w + s["momentum"]


def rmsprop_step(eps_inside):
    """Momentum 0: legacy tf.keras divides by sqrt(rms) + eps, Keras 3 by sqrt(rms + eps)."""

    def step(w, g, s, t, shared):
        s["rms"] = 0.9 * s["rms"] + 0.1 * g * g
        root = np.sqrt(s["rms"] + EPS) if eps_inside else np.sqrt(s["rms"]) + EPS
        return w - LR * g / root

    return step


def rmsprop_centered_momentum_step(w, g, s, t, shared):
    """Momentum > 0: both use the fused kernel's form, epsilon inside the root."""
    s["rms"] = 0.9 * s["rms"] + 0.1 * g * g
    s["mg"] = 0.9 * s["mg"] + 0.1 * g
    s["momentum"] = 0.5 * s["momentum"] + LR * g / np.sqrt(s["rms"] - s["mg"] ** 2 + EPS)
    return w - s["momentum"]


def adagrad_step(eps_inside):
    """Legacy: lr g / (sqrt(acc) + eps); Keras 3: lr g / sqrt(acc + eps)."""

    def step(w, g, s, t, shared):
        s["accumulator"] = s["accumulator"] + g * g
        acc = s["accumulator"]
        return w - LR * g / (np.sqrt(acc + EPS) if eps_inside else np.sqrt(acc) + EPS)

    return step


def adadelta_step(w, g, s, t, shared):
    rho = 0.95
    s["accum_grad"] = rho * s["accum_grad"] + (1 - rho) * g * g
    delta = np.sqrt(s["accum_var"] + EPS) / np.sqrt(s["accum_grad"] + EPS) * g
    s["accum_var"] = rho * s["accum_var"] + (1 - rho) * delta * delta
    return w - LR * delta


def adamax_step(w, g, s, t, shared):
    s["m"] = B1 * s["m"] + (1 - B1) * g
    s["v"] = np.maximum(B2 * s["v"], np.abs(g))
    return w - LR / (1 - B1**t) * s["m"] / (s["v"] + EPS)


def nadam_advance(decay_per_step):
    """The momentum schedule mu_t = beta_1 (1 - 0.5 * 0.96^(decay_per_step * t)).

    Legacy tf.keras uses decay_per_step = 0.004 (its `schedule_decay`), Keras 3 uses 1.
    `momentum_cache` is the running product of the mu's.
    """

    def mu(t):
        return B1 * (1 - 0.5 * 0.96 ** (decay_per_step * t))

    def advance(shared, t):
        shared["mu_t"], shared["mu_next"] = mu(t), mu(t + 1)
        shared["momentum_cache"] = shared["momentum_cache"] * mu(t)

    return advance


def nadam_step(w, g, s, t, shared):
    product, mu_t, mu_next = shared["momentum_cache"], shared["mu_t"], shared["mu_next"]
    s["m"] = B1 * s["m"] + (1 - B1) * g
    s["v"] = B2 * s["v"] + (1 - B2) * g * g
    m_bar = (1 - mu_t) * g / (1 - product) + mu_next * s["m"] / (1 - product * mu_next)
    return w - LR * m_bar / (np.sqrt(s["v"] / (1 - B2**t)) + EPS)


def ftrl_step(w, g, s, t, shared):
    """learning_rate_power -0.5, no l1/l2: w = -linear / (sqrt(accumulator) / lr)."""
    new_accumulator = s["accumulator"] + g * g
    s["linear"] = s["linear"] + g - (np.sqrt(new_accumulator) - np.sqrt(s["accumulator"])) / LR * w
    s["accumulator"] = new_accumulator
    return -s["linear"] / (np.sqrt(new_accumulator) / LR)


O = kopt.optimizers
LEGACY_CASES = {
    "Adam": Case(lambda: O.Adam(LR, epsilon=EPS), {"m": 0, "v": 0}, adam_step(False)),
    "Adam_amsgrad": Case(lambda: O.Adam(LR, epsilon=EPS, amsgrad=True),
                         {"m": 0, "v": 0, "vhat": 0}, adam_step(True)),
    "SGD": Case(lambda: O.SGD(LR, momentum=0.9), {"momentum": 0}, sgd_step),
    "RMSprop": Case(lambda: O.RMSprop(LR, epsilon=EPS), {"rms": 0}, rmsprop_step(False),
                    keras3_step=rmsprop_step(True)),
    "RMSprop_centered_momentum": Case(
        lambda: O.RMSprop(LR, momentum=0.5, centered=True, epsilon=EPS),
        {"rms": 0, "momentum": 0, "mg": 0}, rmsprop_centered_momentum_step),
    "Adagrad": Case(lambda: O.Adagrad(LR, epsilon=EPS), {"accumulator": 0.1}, adagrad_step(False),
                    keras3_step=adagrad_step(True)),
    "Adadelta": Case(lambda: O.Adadelta(LR, epsilon=EPS), {"accum_grad": 0, "accum_var": 0},
                     adadelta_step),
    "Adamax": Case(lambda: O.Adamax(LR, epsilon=EPS), {"m": 0, "v": 0}, adamax_step),
    "Nadam": Case(lambda: O.Nadam(LR, epsilon=EPS), {"m": 0, "v": 0}, nadam_step,
                  advance=nadam_advance(0.004), keras3_step=nadam_step,
                  keras3_advance=nadam_advance(1.0)),
    "Ftrl": Case(lambda: O.Ftrl(LR), {"accumulator": 0.1, "linear": 0}, ftrl_step),
}
CONTINUES_IDENTICALLY = sorted(k for k, c in LEGACY_CASES.items() if c.keras3_step is None)


def simulate(case, step, advance, params, slots, shared, seq, first_t):
    """Run a float64 reference over `seq`; updates `params`, `slots`, `shared` in place."""
    for t, g in enumerate(seq, start=first_t):
        if advance is not None:
            advance(shared, t)
        for name in SHAPES:
            params[name] = step(params[name], g[name].astype(np.float64), slots[name], t, shared)


@pytest.fixture(scope="module")
def legacy_layout():
    if not LAYOUT_PATH.exists():
        pytest.skip(f"reference file {LAYOUT_PATH} is not in this checkout")
    return json.loads(LAYOUT_PATH.read_text())


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_set_weights_accepts_legacy_tf_keras_weights(name, legacy_layout):
    case = LEGACY_CASES[name]
    # The legacy optimizer's history: LEGACY_STEPS steps from its initial state.
    params = {v.name: v.numpy().astype(np.float64) for v in make_variables()}
    slots = {k: {s: np.full(shape, fill, np.float64) for s, fill in case.slots.items()}
             for k, shape in SHAPES.items()}
    shared = {"momentum_cache": 1.0}
    simulate(case, case.step, case.advance, params, slots, shared,
             grads_seq(LEGACY_STEPS, seed=3), first_t=1)

    # What its get_weights() returned, in the recorded layout (float32, int64 iterations).
    legacy_weights = []
    for entry, shape in legacy_layout[name]:
        key = entry[: -len(":0")]
        if key == "iter":
            value = np.asarray(LEGACY_STEPS, np.int64)
        elif key == "momentum_cache":
            value = np.asarray(shared["momentum_cache"], np.float32)
        else:
            var, slot = key.split("/")
            value = slots[var][slot].astype(np.float32)
        assert value.shape == tuple(shape), entry
        legacy_weights.append(value)

    float32_params = {k: v.astype(np.float32) for k, v in params.items()}
    variables = make_variables(float32_params)
    opt = case.make()
    opt.build(variables)
    opt.set_weights(legacy_weights)
    assert int(opt.iterations) == LEGACY_STEPS
    for got, want in zip(opt.get_weights(), legacy_weights, strict=True):
        np.testing.assert_array_equal(got, want)

    more = grads_seq(MORE_STEPS, seed=4)
    run(opt, variables, more)
    kopt_params = {v.name: v.numpy() for v in variables}

    def continued(step, advance):
        """Both references continue from the float32 state that was loaded."""
        p = {k: v.astype(np.float64) for k, v in float32_params.items()}
        s = {k: {n: x.astype(np.float32).astype(np.float64) for n, x in d.items()}
             for k, d in slots.items()}
        sh = {"momentum_cache": float(np.float32(shared["momentum_cache"]))}
        simulate(case, step, advance, p, s, sh, more, first_t=LEGACY_STEPS + 1)
        return p

    legacy = continued(case.step, case.advance)
    keras3 = legacy if case.keras3_step is None else continued(case.keras3_step, case.keras3_advance)
    for k in SHAPES:
        np.testing.assert_allclose(kopt_params[k], keras3[k], rtol=1e-5, atol=1e-6, err_msg=k)
    gap = max(np.max(np.abs(kopt_params[k] - legacy[k])) for k in SHAPES)
    if name in CONTINUES_IDENTICALLY:
        assert gap < 1e-5
    else:   # the state loads, but the next steps follow Keras 3's formula
        assert gap > 1e-3, gap


# --------------------------------------------------------------------------------------
# orbax through flax's nnx.Optimizer (issue 14, item 1)


NNX_CASES = {
    "adam_defaults": lambda: kopt.functional.adam(0.05),   # small leaves bucketed
    "adam_no_buckets": lambda: kopt.functional.adam(0.05, bucket_threshold=0),
    "adam_buckets_ema": lambda: kopt.functional.adam(0.05, bucket_threshold=16, use_ema=True),
    "muon": lambda: kopt.functional.muon(0.05),   # empty second moments on the Muon branch
    "adamw_int8": lambda: kopt.functional.adamw(0.05, state_dtype="int8", min_quantized_size=16,
                                                bucket_threshold=8),
}


@pytest.mark.parametrize("case", sorted(NNX_CASES))
def test_orbax_round_trip_through_nnx_optimizer_resumes_bit_for_bit(case, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    nnx = pytest.importorskip("flax.nnx")
    import kopt.interop.flax as kopt_flax

    class Net(nnx.Module):
        def __init__(self, seed):
            rng = np.random.default_rng(seed)
            self.hidden = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
            self.out = nnx.Linear(8, 2, rngs=nnx.Rngs(0))
            for layer in (self.hidden, self.out):   # values from NumPy, per seed
                layer.kernel.set_value(jnp.asarray(
                    rng.standard_normal(layer.kernel.get_value().shape), jnp.float32))

        def __call__(self, x):
            return self.out(jax.nn.relu(self.hidden(x)))

    rng = np.random.default_rng(5)
    batches = [(jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
                jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)) for _ in range(5)]

    @nnx.jit
    def train_step(model, optimizer, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    def make(seed):
        model = Net(seed)
        return model, nnx.Optimizer(model, kopt_flax.transform(NNX_CASES[case]()), wrt=nnx.Param)

    with jax.numpy_rank_promotion("allow"):   # nnx.Linear broadcasts its bias
        model, optimizer = make(0)
        for x, y in batches[:2]:
            train_step(model, optimizer, x, y)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp_path / "ckpt", {"model": nnx.state(model),
                                              "optimizer": nnx.state(optimizer)})
        checkpointer.wait_until_finished()
        for x, y in batches[2:]:   # the uninterrupted run
            train_step(model, optimizer, x, y)

        # A fresh process: another model and optimizer, restored from the checkpoint.
        resumed_model, resumed_optimizer = make(1)
        target = {"model": nnx.state(resumed_model), "optimizer": nnx.state(resumed_optimizer)}
        restored = checkpointer.restore(
            tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
        checkpointer.close()
        nnx.update(resumed_model, restored["model"])
        nnx.update(resumed_optimizer, restored["optimizer"])
        for x, y in batches[2:]:
            train_step(resumed_model, resumed_optimizer, x, y)

    for ours, theirs in ((resumed_model, model), (resumed_optimizer, optimizer)):
        a, b = nnx.state(ours), nnx.state(theirs)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(resumed_optimizer.step.get_value()) == 5
