"""A small real training run: `python -m kopt.demo`.

Fits a two-layer MLP to a synthetic regression problem twice: once with a jitted
`kopt.functional` step, once with the stateful `kopt.optimizers.Adam` in a plain Python
loop, Keras style. Prints a progress bar and the falling loss; takes a few seconds on CPU.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import kopt

STEPS = 300
WIDTH = 30
SCHEDULE = kopt.schedules.ExponentialDecay(3e-2, decay_steps=100, decay_rate=0.5)


def make_data(key, n=2048, d_in=16):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (n, d_in))
    w_true = jax.random.normal(k2, (d_in, 1))
    y = jnp.sin(x @ w_true) + 0.05 * jax.random.normal(k3, (n, 1))
    return x, y


def init_params(key, d_in=16, hidden=64):
    k1, k2 = jax.random.split(key)
    return {
        "dense1": {"kernel": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
                   "bias": jnp.zeros((hidden,))},
        "dense2": {"kernel": jax.random.normal(k2, (hidden, 1)) / np.sqrt(hidden),
                   "bias": jnp.zeros((1,))},
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    pred = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
    return jnp.mean(jnp.square(pred - y))


def progress(label, step, total, loss, start):
    done = int(WIDTH * step / total)
    bar = "#" * done + "-" * (WIDTH - done)
    sys.stdout.write(f"\r{label:<11}[{bar}] {step:>4}/{total}  loss {loss:.5f}  "
                     f"{time.perf_counter() - start:5.1f}s")
    sys.stdout.flush()


def functional_run(params, x, y):
    """The jitted functional loop: state in, state out."""
    tx = kopt.functional.adam(learning_rate=SCHEDULE, global_clipnorm=1.0)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return kopt.functional.apply_updates(params, updates), state, loss

    start, losses = time.perf_counter(), []
    for i in range(1, STEPS + 1):
        params, state, loss = step(params, state, x, y)
        if i % 10 == 0 or i == 1:
            losses.append(float(loss))
            progress("functional", i, STEPS, losses[-1], start)
    print()
    return losses


def stateful_run(params, x, y):
    """The Keras-style imperative loop: Variables, apply_gradients, iterations."""
    variables = [kopt.Variable(v, name=jax.tree_util.keystr(path))
                 for path, v in jax.tree_util.tree_leaves_with_path(params)]
    treedef = jax.tree.structure(params)
    opt = kopt.optimizers.Adam(learning_rate=SCHEDULE, global_clipnorm=1.0)

    def loss_of_values(values, x, y):
        return loss_fn(jax.tree.unflatten(treedef, values), x, y)

    grad_fn = jax.jit(jax.value_and_grad(loss_of_values))
    start, losses = time.perf_counter(), []
    for i in range(1, STEPS + 1):
        loss, grads = grad_fn([v.value for v in variables], x, y)
        opt.apply_gradients(zip(grads, variables))
        if i % 10 == 0 or i == 1:
            losses.append(float(loss))
            progress("stateful", int(opt.iterations), STEPS, losses[-1], start)
    print()
    print(f"optimizer state: {len(opt.get_weights())} arrays "
          f"(iterations + m and v for {len(variables)} variables)")
    return losses


def main():
    print(f"kopt {kopt.__version__} demo on {jax.devices()[0].platform.upper()}: "
          f"2-layer MLP, synthetic regression, Adam, {STEPS} steps")
    x, y = make_data(jax.random.PRNGKey(0))
    params = init_params(jax.random.PRNGKey(1))
    f_losses = functional_run(params, x, y)
    s_losses = stateful_run(params, x, y)
    for name, losses in (("functional", f_losses), ("stateful", s_losses)):
        print(f"{name:<11} loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    gap = max(abs(a - b) for a, b in zip(f_losses, s_losses))
    print(f"both layers ran the same maths: largest loss difference {gap:.2e}")
    if not (f_losses[-1] < 0.5 * f_losses[0] and s_losses[-1] < 0.5 * s_losses[0]):
        raise SystemExit("demo: the loss did not fall as expected")


if __name__ == "__main__":
    main()
