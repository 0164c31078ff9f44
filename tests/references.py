"""Plain-NumPy float64 references for the optimizers, written from Keras 3's formulas.

Deliberately independent of the code under test: no jax, no kopt. Each optimizer takes

- `params`: a list of arrays (one per leaf, any shapes);
- `grads_seq`: a sequence of steps, each a list of gradient arrays like `params`;
- its hyperparameters, with Keras 3's names and defaults;
- the cross-cutting options, as keywords (`**options` of `keras_loop`);

and returns the trajectory: a list with one entry per call, each a list of float64 arrays
(the params after that call).

`keras_loop` is the one loop around every reference's rule (here and in the other
`tests/references*.py`): one call of `keras.src.optimizers.base_optimizer.BaseOptimizer.apply`
(and the JAX backend's `_backend_apply_gradients`), per call k (0-based):

1. the gradients are divided by `loss_scale_factor`;
2. with `gradient_accumulation_steps=N`, they are added to a sum, and only a call with
   (k + 1) % N == 0 updates, on the sum's mean (then the sum restarts); other calls change
   no weight;
3. an update clips (`_clip_gradients`: `clipnorm` per tensor, else `global_clipnorm`,
   else `clipvalue`; 0 or None is off), applies the decoupled weight decay
   `w -= w * weight_decay * lr` where `weight_decay_mask` allows, then the rule, with
   `lr = learning_rate(k)` (a schedule reads the raw call count, Keras's `_iterations`)
   and `t` the number of updates including this one;
4. with `use_ema`, after *every* call, an update or not (Keras updates the average on every
   call, `_update_model_variables_moving_average`): `ema = mu ema + (1 - mu) w`, with
   `mu = 0` while no update was done before the call (`iterations == 0`) and
   `ema_momentum` after; with `ema_overwrite_frequency=F`, the call then sets `w = ema`
   when (updates before it + 1) % F == 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "sgd",
    "rmsprop",
    "adam",
    "adamw",
    "exponential_decay",
    "clip_gradients",
    "keras_loop",
    "run",
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


def keras_loop(
    params: Sequence[np.ndarray],
    grads_seq: Sequence[Sequence[np.ndarray]],
    learning_rate: float | Callable[[int], float],
    step: Callable[[Arrays, Arrays, float, int], Arrays],
    record: Callable[[Arrays, Arrays, int], Any] | None = None,
    *,
    weight_decay: float | None = None,
    weight_decay_mask: Sequence[bool] | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    loss_scale_factor: float | None = None,
    gradient_accumulation_steps: int | None = None,
    use_ema: bool = False,
    ema_momentum: float = 0.99,
    ema_overwrite_frequency: int | None = None,
) -> list:
    """The Keras `apply` loop of the module docstring around `step(w, grads, lr, t) -> w`
    (lists of float64 arrays; `step` keeps its own slots). Returns `record(w, ema,
    updates)` after every call (default: a copy of w). A rule that decays its weights
    itself (Muon per branch, Schedule-Free on y) gets no `weight_decay` here."""
    w = [np.array(p, dtype=np.float64) for p in params]
    decays = [True] * len(w) if weight_decay_mask is None else list(weight_decay_mask)
    accum = [np.zeros_like(x) for x in w]
    ema = [np.zeros_like(x) for x in w]
    updates = 0
    out = []
    for call, grads in enumerate(grads_seq):
        done = updates   # Keras's `iterations` during this call
        grads = [np.asarray(g, dtype=np.float64) for g in grads]
        if loss_scale_factor is not None:
            grads = [g / loss_scale_factor for g in grads]
        run_update = True
        if gradient_accumulation_steps:
            accum = [a + g for a, g in zip(accum, grads)]
            run_update = (call + 1) % gradient_accumulation_steps == 0
            if run_update:
                grads = [a / gradient_accumulation_steps for a in accum]
                accum = [np.zeros_like(x) for x in w]
        if run_update:
            lr = learning_rate(call) if callable(learning_rate) else learning_rate
            grads = clip_gradients(grads, clipnorm, clipvalue, global_clipnorm)
            if weight_decay is not None:
                w = [x - x * weight_decay * lr if d else x for x, d in zip(w, decays)]
            updates += 1
            w = step(w, grads, lr, updates)
        if use_ema:
            mu = 0.0 if done == 0 else ema_momentum
            ema = [mu * e + (1 - mu) * x for e, x in zip(ema, w)]
            if ema_overwrite_frequency and (done + 1) % ema_overwrite_frequency == 0:
                w = [e.copy() for e in ema]
        out.append(record(w, ema, updates) if record else [x.copy() for x in w])
    return out


def run(
    init_slots: Callable[[np.ndarray], dict],
    update: Callable[[np.ndarray, np.ndarray, dict, float, int], np.ndarray],
    params: Sequence[np.ndarray],
    grads_seq: Sequence[Sequence[np.ndarray]],
    learning_rate: float | Callable[[int], float],
    **options,
) -> list[Arrays]:
    """`keras_loop` around a per-variable rule: `init_slots(w) -> slots` (a dict the rule
    updates in place) and `update(w, g, slots, lr, t) -> new w`, Keras's `update_step`."""
    slots = [init_slots(np.array(p, dtype=np.float64)) for p in params]

    def step(w, grads, lr, t):
        return [update(x, g, s, lr, t) for x, g, s in zip(w, grads, slots)]

    return keras_loop(params, grads_seq, learning_rate, step, **options)


def sgd(
    params,
    grads_seq,
    learning_rate=0.01,
    momentum=0.0,
    nesterov=False,
    **options,
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

    return run(init, update, params, grads_seq, learning_rate, **options)


def rmsprop(
    params,
    grads_seq,
    learning_rate=0.001,
    rho=0.9,
    momentum=0.0,
    epsilon=1e-7,
    centered=False,
    **options,
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

    return run(init, update, params, grads_seq, learning_rate, **options)


def adam(
    params,
    grads_seq,
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    **options,
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

    return run(init, update, params, grads_seq, learning_rate, **options)


def adamw(
    params,
    grads_seq,
    learning_rate=0.001,
    weight_decay=0.004,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    **options,
) -> list[Arrays]:
    """`keras.optimizers.AdamW`: Keras's decoupled weight decay, then the Adam step."""
    return adam(params, grads_seq, learning_rate, beta_1, beta_2, epsilon, amsgrad,
                weight_decay=weight_decay, **options)
