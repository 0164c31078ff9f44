"""Plain-NumPy float64 references for Adagrad, Adamax, Adadelta, Nadam, Ftrl and Lion.

Written from Keras 3's `update_step` formulas (keras/src/optimizers/<name>.py), with no
jax and no kopt. Each function has the calling convention of `tests/references.py`
(params, a sequence of gradient steps, then Keras's arguments and defaults, then the
cross-cutting options) and returns the trajectory: the params after every step.
The Keras `apply` loop around the rules, with every cross-cutting option, is
`references.keras_loop` (through `references.run`).
"""

from __future__ import annotations

import math

import numpy as np

try:
    from tests.references import run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from references import run

__all__ = ["adagrad", "adamax", "adadelta", "nadam", "ftrl", "lion"]


def _zeros(*names, **filled):
    def init(v):
        slots = {name: np.zeros_like(v) for name in names}
        slots.update({name: np.full_like(v, value) for name, value in filled.items()})
        return slots

    return init


def adagrad(
    params, grads_seq, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **options,
):
    """`keras.optimizers.Adagrad`: acc += g^2;  w -= lr * g / sqrt(acc + eps)."""

    def update(w, g, s, lr, t):
        s["acc"] = s["acc"] + g * g
        return w - lr * g / np.sqrt(s["acc"] + epsilon)

    return run(_zeros(acc=initial_accumulator_value), update, params, grads_seq, learning_rate, **options)


def adamax(
    params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **options,
):
    """`keras.optimizers.Adamax`.

    m = beta_1 m + (1 - beta_1) g;  u = max(beta_2 u, |g|)
    w -= lr m / ((1 - beta_1^t) (u + eps))
    """

    def update(w, g, s, lr, t):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["u"] = np.maximum(beta_2 * s["u"], np.abs(g))
        return w - lr * s["m"] / ((1 - beta_1**t) * (s["u"] + epsilon))

    return run(_zeros("m", "u"), update, params, grads_seq, learning_rate, **options)


def adadelta(
    params, grads_seq, learning_rate=0.001, rho=0.95, epsilon=1e-7, **options,
):
    """`keras.optimizers.Adadelta`.

    Eg = rho Eg + (1 - rho) g^2
    d = -sqrt(Ed + eps) / sqrt(Eg + eps) * g      (Ed of the previous step)
    Ed = rho Ed + (1 - rho) d^2;  w += lr d
    """

    def update(w, g, s, lr, t):
        s["eg"] = rho * s["eg"] + (1 - rho) * g * g
        d = -np.sqrt(s["ed"] + epsilon) / np.sqrt(s["eg"] + epsilon) * g
        s["ed"] = rho * s["ed"] + (1 - rho) * d * d
        return w + lr * d

    return run(_zeros("eg", "ed"), update, params, grads_seq, learning_rate, **options)


def nadam(
    params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **options,
):
    """`keras.optimizers.Nadam`, with mu_t = beta_1 (1 - 0.5 * 0.96^t).

    The running product prod_{i<=t} mu_i is recomputed from scratch at each step here (the
    optimizer keeps it as state).
    m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
    m_hat = mu_{t+1} m / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g / (1 - prod_{i<=t} mu_i)
    w -= lr m_hat / (sqrt(v / (1 - beta_2^t)) + eps)
    """

    def mu(i):
        return beta_1 * (1 - 0.5 * 0.96**i)

    def update(w, g, s, lr, t):
        product = math.prod(mu(i) for i in range(1, t + 1))
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g * g
        m_hat = mu(t + 1) * s["m"] / (1 - product * mu(t + 1)) + (1 - mu(t)) * g / (1 - product)
        v_hat = s["v"] / (1 - beta_2**t)
        return w - lr * m_hat / (np.sqrt(v_hat) + epsilon)

    return run(_zeros("m", "v"), update, params, grads_seq, learning_rate, **options)


def ftrl(
    params, grads_seq, learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
    l1_regularization_strength=0.0, l2_regularization_strength=0.0,
    l2_shrinkage_regularization_strength=0.0, beta=0.0, **options,
):
    """`keras.optimizers.Ftrl` (FTRL-Proximal), with p = -learning_rate_power.

    n' = n + g^2;  z += g + 2 l2_shrinkage w - (n'^p - n^p) / lr * w;  n = n'
    w = (clip(z, -l1, l1) - z) / (n'^p / lr + 2 l2 + beta / lr)
    """
    p = -learning_rate_power
    l1 = l1_regularization_strength

    def update(w, g, s, lr, t):
        n_new = s["n"] + g * g
        s["z"] = s["z"] + g + 2 * l2_shrinkage_regularization_strength * w - (n_new**p - s["n"] ** p) / lr * w
        s["n"] = n_new
        denominator = n_new**p / lr + 2 * l2_regularization_strength + beta / lr
        return (np.clip(s["z"], -l1, l1) - s["z"]) / denominator

    return run(_zeros("z", n=initial_accumulator_value), update, params, grads_seq, learning_rate, **options)


def lion(
    params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **options,
):
    """`keras.optimizers.Lion`: w -= lr sign(beta_1 m + (1 - beta_1) g);  m = beta_2 m + (1 - beta_2) g."""

    def update(w, g, s, lr, t):
        w = w - lr * np.sign(beta_1 * s["m"] + (1 - beta_1) * g)
        s["m"] = beta_2 * s["m"] + (1 - beta_2) * g
        return w

    return run(_zeros("m"), update, params, grads_seq, learning_rate, **options)
