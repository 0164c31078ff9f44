"""Plain-NumPy float64 references for Adafactor and Lamb.

Written from the formulas of Keras 3's `update_step` (keras/src/optimizers/adafactor.py and
lamb.py) and the papers, with no jax and no kopt. The calling convention is that of
`tests/references.py`: params, a sequence of gradient steps, Keras's arguments and
defaults, then the cross-cutting options; the result is the trajectory (the params after
every step). The Keras `apply` loop around the rules, with every cross-cutting option, is
`references.keras_loop` (through `references.run`); `t` is the 1-based update.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from tests.references import run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from references import run

__all__ = ["adafactor", "lamb"]


def _rms(x) -> float:
    return math.sqrt(float(np.mean(np.square(x))))


def adafactor(
    params, grads_seq, learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3,
    clip_threshold=1.0, relative_step=True, **options,
):
    """`keras.optimizers.Adafactor`.

    rho = min(lr, 1/sqrt(t)) (taken once more first when relative_step and lr is a float);
    step = max(eps_2, rms(w)) * rho;  G = g^2 + eps_1;  b = 1 - t^beta_2_decay.
    Rank >= 2, factored over the last two axes: row = b row + (1-b) G.mean(-1),
    col = b col + (1-b) G.mean(-2), v[..., i, j] = row[..., i] / mean(row[..., :]) * col[..., j].
    Rank < 2: v = b v + (1-b) G.
    u = g / sqrt(v);  w -= step * u / max(1, rms(u) / clip_threshold).
    """

    def init(w):
        if w.ndim < 2:
            return {"v": np.zeros_like(w)}
        return {"row": np.zeros(w.shape[:-1]), "col": np.zeros(w.shape[:-2] + w.shape[-1:]),
                "v": np.zeros_like(w)}

    def update(w, g, s, lr, t):
        if relative_step and not callable(learning_rate):
            lr = min(lr, 1 / math.sqrt(t))
        rho = min(lr, 1 / math.sqrt(t))
        step = max(epsilon_2, _rms(w)) * rho
        sq = g * g + epsilon_1
        b = 1.0 - t**beta_2_decay
        if w.ndim >= 2:
            s["row"] = b * s["row"] + (1 - b) * sq.mean(axis=-1)
            s["col"] = b * s["col"] + (1 - b) * sq.mean(axis=-2)
            row = s["row"] / s["row"].mean(axis=-1, keepdims=True)
            s["v"] = np.einsum("...i,...j->...ij", row, s["col"])
        else:
            s["v"] = b * s["v"] + (1 - b) * sq
        u = g / np.sqrt(s["v"])
        u = u / max(1.0, _rms(u) / clip_threshold)
        return w - step * u

    return run(init, update, params, grads_seq, learning_rate, **options)


def lamb(
    params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **options,
):
    """`keras.optimizers.Lamb`.

    m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
    u = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + eps)
    ratio = |w| / |u| (Frobenius norms) if both are > 0, else 1;  w -= lr * ratio * u
    """

    def init(w):
        return {"m": np.zeros_like(w), "v": np.zeros_like(w)}

    def update(w, g, s, lr, t):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g * g
        u = (s["m"] / (1 - beta_1**t)) / (np.sqrt(s["v"] / (1 - beta_2**t)) + epsilon)
        w_norm, u_norm = np.linalg.norm(w.ravel()), np.linalg.norm(u.ravel())
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        return w - lr * ratio * u

    return run(init, update, params, grads_seq, learning_rate, **options)
