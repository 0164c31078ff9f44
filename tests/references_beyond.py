"""Plain-NumPy float64 references for RAdam, AdaBelief, Adan, AdEMAMix and LARS.

Written from the papers' algorithms (and, where the papers leave a choice open, the
authors' published code, as each docstring says), with no jax and no kopt. Each function
takes the params (a list of arrays), a sequence of gradient steps (lists like the params),
the optimizer's arguments with kopt's names and defaults, then the cross-cutting options,
and returns the trajectory: a list with the params (float64) after every call.

The Keras `apply` loop around the rules, with every cross-cutting option (loss scale,
accumulation, clipping, decoupled weight decay, EMA updated on every call), is
`references.keras_loop` (through `references.run`); `test_beyond_keras.py` checks it
against Keras with EMA and accumulation together.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from tests.references import keras_loop, run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from references import keras_loop, run

__all__ = ["radam", "adabelief", "adan", "ademamix", "lars", "adopt"]


def _zeros(*names):
    return lambda x: {name: np.zeros_like(x) for name in names}


def radam(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
          threshold=5.0, **options):
    """Liu et al. (2020), Algorithm 2, with the authors' code's threshold and epsilon.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  m_hat = m / (1 - b1^t)
    rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    rho_t >= threshold:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                         w -= lr r m_hat / (sqrt(v / (1 - b2^t)) + eps)
    otherwise:           w -= lr m_hat
    """
    rho_inf = 2 / (1 - beta_2) - 1

    def update(w, g, s, lr, t):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g * g
        m_hat = s["m"] / (1 - beta_1**t)
        rho = rho_inf - 2 * t * beta_2**t / (1 - beta_2**t)
        if rho < threshold:
            return w - lr * m_hat
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return w - lr * r * m_hat / (np.sqrt(s["v"] / (1 - beta_2**t)) + epsilon)

    return run(_zeros("m", "v"), update, params, grads_seq, learning_rate, **options)


def adabelief(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-16,
              **options):
    """Zhuang et al. (2020), Algorithm 2.

    m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) (g - m)^2 + eps
    w -= lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    """

    def update(w, g, s, lr, t):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["s"] = beta_2 * s["s"] + (1 - beta_2) * (g - s["m"]) ** 2 + epsilon
        return w - lr * (s["m"] / (1 - beta_1**t)) / (np.sqrt(s["s"] / (1 - beta_2**t)) + epsilon)

    return run(_zeros("m", "s"), update, params, grads_seq, learning_rate, **options)


def adan(params, grads_seq, learning_rate=0.001, beta_1=0.98, beta_2=0.92, beta_3=0.99,
         epsilon=1e-8, **options):
    """Xie et al. (2022), Algorithm 1, with decay-rate betas (the paper's 1 - beta), zero
    initial moments with bias correction and a zero first difference (the authors' code).

    d = g - g_prev (0 at t = 1)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) d;  n = b3 n + (1 - b3) (g + b2 d)^2
    w -= lr (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t)) + eps)
    """

    def update(w, g, s, lr, t):
        d = np.zeros_like(g) if t == 1 else g - s["prev"]
        s["prev"] = g
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * d
        s["n"] = beta_3 * s["n"] + (1 - beta_3) * (g + beta_2 * d) ** 2
        num = s["m"] / (1 - beta_1**t) + beta_2 * s["v"] / (1 - beta_2**t)
        return w - lr * num / (np.sqrt(s["n"] / (1 - beta_3**t)) + epsilon)

    return run(_zeros("m", "v", "n", "prev"), update, params, grads_seq, learning_rate, **options)


def ademamix(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, beta_3=0.9999,
             alpha=5.0, epsilon=1e-8, alpha_warmup_steps=None, beta_3_warmup_steps=None,
             **options):
    """Pagliardini et al. (2024), Algorithm 1 with its alpha and beta_3 schedulers.

    alpha_t = alpha min(t / T_alpha, 1)
    beta3_t = min(exp(ln b1 ln b3 / ((1 - a) ln b3 + a ln b1)), b3),  a = min(t / T_b3, 1)
    m1 = b1 m1 + (1 - b1) g;  m2 = beta3_t m2 + (1 - beta3_t) g;  nu = b2 nu + (1 - b2) g^2
    w -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(nu / (1 - b2^t)) + eps)
    """

    def update(w, g, s, lr, t):
        a_t = alpha * min(t / alpha_warmup_steps, 1.0) if alpha_warmup_steps else alpha
        b3_t = beta_3
        if beta_3_warmup_steps:
            a = min(t / beta_3_warmup_steps, 1.0)
            lb1, lb3 = math.log(beta_1), math.log(beta_3)
            b3_t = min(math.exp(lb1 * lb3 / ((1 - a) * lb3 + a * lb1)), beta_3)
        s["m1"] = beta_1 * s["m1"] + (1 - beta_1) * g
        s["m2"] = b3_t * s["m2"] + (1 - b3_t) * g
        s["nu"] = beta_2 * s["nu"] + (1 - beta_2) * g * g
        num = s["m1"] / (1 - beta_1**t) + a_t * s["m2"]
        return w - lr * num / (np.sqrt(s["nu"] / (1 - beta_2**t)) + epsilon)

    return run(_zeros("m1", "m2", "nu"), update, params, grads_seq, learning_rate, **options)


def lars(params, grads_seq, learning_rate=1.0, momentum=0.9, nesterov=False,
         trust_coefficient=0.001, coupled_weight_decay=0.0, epsilon=0.0, trust_ratio_mask=None,
         **options):
    """You et al. (2017), Algorithm 1, with the trust ratio over the decayed gradient.

    gt = g + wd w (where weight_decay_mask allows);  r = tc |w| / (|gt| + eps), or 1 when
    |w| = 0, |gt| = 0 or trust_ratio_mask is False
    v = mu v - lr r gt;  w += v   (nesterov: w += mu v - lr r gt; mu = 0: w -= lr r gt)
    """
    n = len(params)
    adapt = [True] * n if trust_ratio_mask is None else list(trust_ratio_mask)
    mask = options.get("weight_decay_mask")
    decays = [True] * n if mask is None else list(mask)

    velocity = [np.zeros(np.shape(p)) for p in params]

    def update(w, g, lr, i):
        if decays[i]:
            g = g + coupled_weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if adapt[i] and w_norm > 0 and g_norm > 0:
            g = g * (trust_coefficient * w_norm / (g_norm + epsilon))
        if momentum == 0:
            return w - lr * g
        velocity[i] = momentum * velocity[i] - lr * g
        return w + (momentum * velocity[i] - lr * g if nesterov else velocity[i])

    def step(w, grads, lr, t):
        return [update(x, g, lr, i) for i, (x, g) in enumerate(zip(w, grads))]

    return keras_loop(params, grads_seq, learning_rate, step, **options)


def adopt(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.9999, epsilon=1e-6,
          use_clipping=True, **options):
    """Taniguchi et al. (2024), Algorithm 1, with the clipped variant's bound (t - 1)^(1/4).

    t = 1: v = g^2 (no move). Then n = g / max(sqrt(v), eps), clipped to +-(t - 1)^(1/4)
    if use_clipping; m = b1 m + (1 - b1) n; v = b2 v + (1 - b2) g^2; w -= lr m.
    """

    def update(w, g, s, lr, t):
        if t == 1:
            s["v"] = g**2
            return w
        n = g / np.maximum(np.sqrt(s["v"]), epsilon)
        if use_clipping:
            n = np.clip(n, -((t - 1) ** 0.25), (t - 1) ** 0.25)
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * n
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g**2
        return w - lr * s["m"]

    return run(_zeros("m", "v"), update, params, grads_seq, learning_rate, **options)
