"""Plain-NumPy float64 references for Muon and Schedule-Free AdamW.

Written from the update rules of `keras.optimizers.Muon` and
`keras.optimizers.ScheduleFreeAdamW` (Keras 3), with no jax and no kopt. The calling
convention is that of `tests/references.py`: params (a list of arrays), a sequence of
gradient steps, then Keras's arguments and defaults, then the cross-cutting options.
Each returns the trajectory (the params after every step); `schedule_free_adamw` also
returns the averaged point x after every step.

The Keras `apply` loop around the rules, with every cross-cutting option, is
`references.keras_loop`; both rules decay their weights themselves (Muon per branch,
Schedule-Free on y), so the loop gets no `weight_decay`.
"""

from __future__ import annotations

import math
import re

import numpy as np

try:
    from tests.references import keras_loop
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from references import keras_loop

__all__ = ["newton_schulz", "muon", "schedule_free_adamw"]


def newton_schulz(x, steps, a, b, c):
    """X = x / (||x||_F + 1e-7) (on the wide orientation); X <- aX + (b XX^T + c (XX^T)^2) X."""
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.sqrt(np.sum(x * x)) + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def muon(
    params, grads_seq, names, learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999,
    adam_weight_decay=0.004, epsilon=1e-7, weight_decay=0.004, exclude_layers=None,
    exclude_embeddings=True, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315, adam_lr_ratio=1,
    momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2, *, weight_decay_mask=None,
    **options,
):
    """`keras.optimizers.Muon`; `names` are the variables' paths (they pick the branch)."""
    adam = [
        np.ndim(p) != 2
        or (exclude_embeddings and "embedding" in name.lower())
        or any(re.search(k, name) for k in exclude_layers or ())
        for p, name in zip(params, names)
    ]
    mask = weight_decay_mask or [True] * len(params)
    m = [np.zeros(np.shape(p)) for p in params]
    v = [np.zeros(np.shape(p)) for p in params]

    def update(w, grads, lr, t):
        w = list(w)
        for i, g in enumerate(grads):
            rate = adam_weight_decay if adam[i] else weight_decay
            if rate is not None and mask[i]:
                w[i] = w[i] * (1 - rate * lr)
            if adam[i]:
                m[i] = adam_beta_1 * m[i] + (1 - adam_beta_1) * g
                v[i] = adam_beta_2 * v[i] + (1 - adam_beta_2) * g * g
                scale = math.sqrt(1 - adam_beta_2**t) / (1 - adam_beta_1**t)
                w[i] = w[i] - lr * adam_lr_ratio * scale * m[i] / (np.sqrt(v[i]) + epsilon)
            else:
                m[i] = momentum * m[i] + g
                u = g + momentum * m[i] if nesterov else m[i]
                step = newton_schulz(u, ns_steps, muon_a, muon_b, muon_c)
                if rms_rate is not None:
                    step = step * rms_rate * math.sqrt(max(g.shape))
                w[i] = w[i] - lr * step
        return w

    return keras_loop(params, grads_seq, learning_rate, update, **options)


def schedule_free_adamw(
    params, grads_seq, learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
    warmup_steps=0, *, weight_decay=None, weight_decay_mask=None, **options,
):
    """`keras.optimizers.ScheduleFreeAdamW`: returns `(trajectory of y, trajectory of x)`.

    y = (1 - beta_1) z + beta_1 x; z takes Adam-normalised SGD steps; x is the uniform
    average of the z's (weight 1/t), recovered from y and z before each step.
    """
    mask = weight_decay_mask or [True] * len(params)
    z = [np.array(p, np.float64) for p in params]
    v = [np.zeros_like(x) for x in z]

    def update(y, grads, lr, t):
        y = list(y)
        if weight_decay is not None:
            y = [p * (1 - weight_decay * lr) if use else p for p, use in zip(y, mask)]
        if warmup_steps:
            lr = lr * min(t / warmup_steps, 1.0)
        for i, g in enumerate(grads):
            x = (y[i] - (1 - beta_1) * z[i]) / beta_1
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            z[i] = z[i] - lr * g / (np.sqrt(v[i] / (1 - beta_2**t)) + epsilon)
            x = (1 - 1 / t) * x + z[i] / t
            y[i] = (1 - beta_1) * z[i] + beta_1 * x
        return y

    def record(y, ema, updates):
        return [p.copy() for p in y], [(p - (1 - beta_1) * q) / beta_1 for p, q in zip(y, z)]

    out = keras_loop(params, grads_seq, learning_rate, update, record, **options)
    return [y for y, _ in out], [x for _, x in out]
