"""Plain-NumPy float64 references for the optimizers, written from Keras 3's formulas.

Deliberately independent of the code under test: no jax, no kopt. Each optimizer takes

- `params`: a list of arrays (one per leaf, any shapes);
- `grads_seq`: a sequence of steps, each a list of gradient arrays like `params`;
- its hyperparameters, with Keras 3's names and defaults;

and returns the trajectory: a list with one entry per step, each a list of float64 arrays
(the params after that step).

One step follows `keras.src.optimizers.base_optimizer.BaseOptimizer.apply`:

1. `_clip_gradients`: `clipnorm` (per tensor), else `global_clipnorm`, else `clipvalue`
   (an option of 0 or None is off);
2. `_apply_weight_decay`: `var -= var * weight_decay * lr` where the mask allows, with the
   learning rate of the current step;
3. `update_step` per variable, with `lr = learning_rate(iterations)` where `learning_rate`
   is a float or a schedule called with the step count *before* it is incremented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "sgd",
    "rmsprop",
    "adam",
    "adamw",
    "exponential_decay",
    "clip_gradients",
]

Arrays = list[np.ndarray]


def exponential_decay(
    initial_learning_rate: float, decay_steps: float, decay_rate: float, staircase: bool = False
) -> Callable[[int], float]:
    """Keras's `ExponentialDecay`: `lr0 * decay_rate ** (step / decay_steps)`."""

    def schedule(step: int) -> float:
        p = step / decay_steps
        if staircase:
            p = math.floor(p)
        return initial_learning_rate * decay_rate**p

    return schedule


def clip_gradients(
    grads: Arrays,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> Arrays:
    """Keras's `_clip_gradients`: the first option set (and > 0) of clipnorm, global, value."""
    if clipnorm:
        out = []
        for g in grads:
            norm = math.sqrt(float(np.sum(g * g)))
            out.append(g * clipnorm / max(norm, clipnorm))
        return out
    if global_clipnorm:
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scale = global_clipnorm * min(1.0 / norm, 1.0 / global_clipnorm)
        return [g * scale for g in grads]
    if clipvalue:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return list(grads)


def _run(
    init_slots: Callable[[np.ndarray], dict],
    update: Callable[[np.ndarray, np.ndarray, dict, float, int], np.ndarray],
    params: Sequence[np.ndarray],
    grads_seq: Sequence[Sequence[np.ndarray]],
    learning_rate: float | Callable[[int], float],
    weight_decay: float | None,
    weight_decay_mask: Sequence[bool] | None,
    clipnorm: float | None,
    clipvalue: float | None,
    global_clipnorm: float | None,
) -> list[Arrays]:
    """The Keras `apply` loop; `update(var, g, slots, lr, t)` returns the new var."""
    variables = [np.array(p, dtype=np.float64) for p in params]
    slots = [init_slots(v) for v in variables]
    mask = [True] * len(variables) if weight_decay_mask is None else list(weight_decay_mask)
    trajectory = []
    for iterations, grads in enumerate(grads_seq):
        grads = [np.asarray(g, dtype=np.float64) for g in grads]
        grads = clip_gradients(grads, clipnorm, clipvalue, global_clipnorm)
        lr = learning_rate(iterations) if callable(learning_rate) else learning_rate
        if weight_decay is not None:
            variables = [v - v * weight_decay * lr if use else v for v, use in zip(variables, mask)]
        t = iterations + 1
        variables = [update(v, g, s, lr, t) for v, g, s in zip(variables, grads, slots)]
        trajectory.append([v.copy() for v in variables])
    return trajectory


def sgd(
    params,
    grads_seq,
    learning_rate=0.01,
    momentum=0.0,
    nesterov=False,
    *,
    weight_decay=None,
    weight_decay_mask=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
) -> list[Arrays]:
    """`keras.optimizers.SGD`.

    velocity = momentum * velocity - lr * g
    w += velocity                    (or, nesterov: w += momentum * velocity - lr * g)
    Without momentum: w -= lr * g.
    """

    def init(v):
        return {"velocity": np.zeros_like(v)}

    def update(w, g, s, lr, t):
        if momentum == 0:
            return w - lr * g
        s["velocity"] = momentum * s["velocity"] - lr * g
        if nesterov:
            return w + momentum * s["velocity"] - lr * g
        return w + s["velocity"]

    return _run(
        init,
        update,
        params,
        grads_seq,
        learning_rate,
        weight_decay,
        weight_decay_mask,
        clipnorm,
        clipvalue,
        global_clipnorm,
    )


def rmsprop(
    params,
    grads_seq,
    learning_rate=0.001,
    rho=0.9,
    momentum=0.0,
    epsilon=1e-7,
    centered=False,
    *,
    weight_decay=None,
    weight_decay_mask=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
) -> list[Arrays]:
    """`keras.optimizers.RMSprop` (epsilon inside the square root).

    r = rho * r + (1 - rho) * g^2
    centered: a = rho * a + (1 - rho) * g;  denom = r - a^2 + eps,  else denom = r + eps
    inc = lr * g / sqrt(denom)
    momentum > 0: m = momentum * m + inc; w -= m.   Else: w -= inc.
    """

    def init(v):
        return {"r": np.zeros_like(v), "a": np.zeros_like(v), "m": np.zeros_like(v)}

    def update(w, g, s, lr, t):
        s["r"] = rho * s["r"] + (1 - rho) * g * g
        if centered:
            s["a"] = rho * s["a"] + (1 - rho) * g
            denominator = s["r"] - s["a"] ** 2 + epsilon
        else:
            denominator = s["r"] + epsilon
        increment = lr * g / np.sqrt(denominator)
        if momentum > 0:
            s["m"] = momentum * s["m"] + increment
            return w - s["m"]
        return w - increment

    return _run(
        init,
        update,
        params,
        grads_seq,
        learning_rate,
        weight_decay,
        weight_decay_mask,
        clipnorm,
        clipvalue,
        global_clipnorm,
    )


def adam(
    params,
    grads_seq,
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    *,
    weight_decay=None,
    weight_decay_mask=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
) -> list[Arrays]:
    """`keras.optimizers.Adam`, Keras's epsilon-hat form.

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
    amsgrad: vhat = max(vhat, v) and v := vhat
    w -= alpha * m / (sqrt(v) + epsilon)
    """

    def init(v):
        return {"m": np.zeros_like(v), "v": np.zeros_like(v), "vhat": np.zeros_like(v)}

    def update(w, g, s, lr, t):
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        s["m"] = s["m"] + (g - s["m"]) * (1 - beta_1)
        s["v"] = s["v"] + (g * g - s["v"]) * (1 - beta_2)
        v = s["v"]
        if amsgrad:
            s["vhat"] = np.maximum(s["vhat"], s["v"])
            v = s["vhat"]
        return w - alpha * s["m"] / (np.sqrt(v) + epsilon)

    return _run(
        init,
        update,
        params,
        grads_seq,
        learning_rate,
        weight_decay,
        weight_decay_mask,
        clipnorm,
        clipvalue,
        global_clipnorm,
    )


def adamw(
    params,
    grads_seq,
    learning_rate=0.001,
    weight_decay=0.004,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    *,
    weight_decay_mask=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
) -> list[Arrays]:
    """`keras.optimizers.AdamW`: Keras's decoupled weight decay, then the Adam step."""
    return adam(
        params,
        grads_seq,
        learning_rate,
        beta_1,
        beta_2,
        epsilon,
        amsgrad,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        clipnorm=clipnorm,
        clipvalue=clipvalue,
        global_clipnorm=global_clipnorm,
    )
