"""Plain-NumPy float64 references for RAdam, AdaBelief, Adan, AdEMAMix and LARS.

Written from the papers' algorithms (and, where the papers leave a choice open, the
authors' published code, as each docstring says), with no jax and no kopt. Each function
takes the params (a list of arrays), a sequence of gradient steps (lists like the params),
the optimizer's arguments with kopt's names and defaults, then the cross-cutting options,
and returns the trajectory: a list with the params (float64) after every call.

`_run` is one loop of Keras 3's `apply`, with its cross-cutting options:

1. gradients are divided by `loss_scale_factor`;
2. with `gradient_accumulation_steps=N`, they are summed, and only every N-th call makes
   an update, on their mean (then the sum restarts); other calls change no weight;
3. an update clips (`references.clip_gradients`), applies the decoupled weight decay
   `w -= w * weight_decay * lr` where the mask allows, then the rule, with `t` the number
   of updates so far including this one and `lr` the schedule at the raw call count;
4. with `use_ema`, after every call, an update or not, `ema = m ema + (1 - m) w`, with
   `m = 0` until a first update has been done before the call; with
   `ema_overwrite_frequency=F`, a call sets `w = ema` when (updates before it + 1) % F
   is 0. This is Keras 3's order (`JaxOptimizer._backend_apply_gradients`) and
   `references_muon_sf._loop`'s; `test_beyond_keras.py` checks both loops against Keras.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from tests.references import clip_gradients
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from references import clip_gradients

__all__ = ["radam", "adabelief", "adan", "ademamix", "lars", "adopt"]


def _run(init, update, params, grads_seq, learning_rate, *, weight_decay=None,
         weight_decay_mask=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
         loss_scale_factor=None, gradient_accumulation_steps=None, use_ema=False,
         ema_momentum=0.99, ema_overwrite_frequency=None):
    """`init(w) -> slots dict`; `update(w, g, slots, lr, t, i) -> new w` (leaf index `i`).

    Keras 3's `apply` (jax backend): with accumulation N, call k adds to the sum and, when
    (k + 1) % N == 0, runs on the mean and resets. The EMA is updated after every call,
    real update or not, with momentum 0 while no real update has been done before the
    call, and overwrites the weights when (updates before the call + 1) % F == 0.
    """
    w = [np.array(p, np.float64) for p in params]
    slots = [init(x) for x in w]
    decays = [True] * len(w) if weight_decay_mask is None else list(weight_decay_mask)
    accum = [np.zeros_like(x) for x in w]
    ema = [np.zeros_like(x) for x in w]
    updates = 0
    out = []
    for call, grads in enumerate(grads_seq):
        done = updates
        grads = [np.asarray(g, np.float64) for g in grads]
        if loss_scale_factor is not None:
            grads = [g / loss_scale_factor for g in grads]
        run = True
        if gradient_accumulation_steps:
            accum = [a + g for a, g in zip(accum, grads)]
            run = (call + 1) % gradient_accumulation_steps == 0
            if run:
                grads = [a / gradient_accumulation_steps for a in accum]
                accum = [np.zeros_like(x) for x in w]
        if run:
            lr = learning_rate(call) if callable(learning_rate) else learning_rate
            grads = clip_gradients(grads, clipnorm, clipvalue, global_clipnorm)
            if weight_decay:
                w = [x - x * weight_decay * lr if d else x for x, d in zip(w, decays)]
            t = updates + 1
            w = [update(x, g, s, lr, t, i) for i, (x, g, s) in enumerate(zip(w, grads, slots))]
            updates = t
        if use_ema:
            m = 0.0 if done == 0 else ema_momentum
            ema = [m * e + (1 - m) * x for e, x in zip(ema, w)]
            if ema_overwrite_frequency and (done + 1) % ema_overwrite_frequency == 0:
                w = [e.copy() for e in ema]
        out.append([x.copy() for x in w])
    return out


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

    def update(w, g, s, lr, t, i):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g * g
        m_hat = s["m"] / (1 - beta_1**t)
        rho = rho_inf - 2 * t * beta_2**t / (1 - beta_2**t)
        if rho < threshold:
            return w - lr * m_hat
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return w - lr * r * m_hat / (np.sqrt(s["v"] / (1 - beta_2**t)) + epsilon)

    return _run(_zeros("m", "v"), update, params, grads_seq, learning_rate, **options)


def adabelief(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-16,
              **options):
    """Zhuang et al. (2020), Algorithm 2.

    m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) (g - m)^2 + eps
    w -= lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    """

    def update(w, g, s, lr, t, i):
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["s"] = beta_2 * s["s"] + (1 - beta_2) * (g - s["m"]) ** 2 + epsilon
        return w - lr * (s["m"] / (1 - beta_1**t)) / (np.sqrt(s["s"] / (1 - beta_2**t)) + epsilon)

    return _run(_zeros("m", "s"), update, params, grads_seq, learning_rate, **options)


def adan(params, grads_seq, learning_rate=0.001, beta_1=0.98, beta_2=0.92, beta_3=0.99,
         epsilon=1e-8, **options):
    """Xie et al. (2022), Algorithm 1, with decay-rate betas (the paper's 1 - beta), zero
    initial moments with bias correction and a zero first difference (the authors' code).

    d = g - g_prev (0 at t = 1)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) d;  n = b3 n + (1 - b3) (g + b2 d)^2
    w -= lr (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t)) + eps)
    """

    def update(w, g, s, lr, t, i):
        d = np.zeros_like(g) if t == 1 else g - s["prev"]
        s["prev"] = g
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * d
        s["n"] = beta_3 * s["n"] + (1 - beta_3) * (g + beta_2 * d) ** 2
        num = s["m"] / (1 - beta_1**t) + beta_2 * s["v"] / (1 - beta_2**t)
        return w - lr * num / (np.sqrt(s["n"] / (1 - beta_3**t)) + epsilon)

    return _run(_zeros("m", "v", "n", "prev"), update, params, grads_seq, learning_rate, **options)


def ademamix(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.999, beta_3=0.9999,
             alpha=5.0, epsilon=1e-8, alpha_warmup_steps=None, beta_3_warmup_steps=None,
             **options):
    """Pagliardini et al. (2024), Algorithm 1 with its alpha and beta_3 schedulers.

    alpha_t = alpha min(t / T_alpha, 1)
    beta3_t = min(exp(ln b1 ln b3 / ((1 - a) ln b3 + a ln b1)), b3),  a = min(t / T_b3, 1)
    m1 = b1 m1 + (1 - b1) g;  m2 = beta3_t m2 + (1 - beta3_t) g;  nu = b2 nu + (1 - b2) g^2
    w -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(nu / (1 - b2^t)) + eps)
    """

    def update(w, g, s, lr, t, i):
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

    return _run(_zeros("m1", "m2", "nu"), update, params, grads_seq, learning_rate, **options)


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

    def update(w, g, s, lr, t, i):
        if decays[i]:
            g = g + coupled_weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if adapt[i] and w_norm > 0 and g_norm > 0:
            g = g * (trust_coefficient * w_norm / (g_norm + epsilon))
        if momentum == 0:
            return w - lr * g
        s["v"] = momentum * s["v"] - lr * g
        return w + (momentum * s["v"] - lr * g if nesterov else s["v"])

    return _run(_zeros("v"), update, params, grads_seq, learning_rate, **options)


def adopt(params, grads_seq, learning_rate=0.001, beta_1=0.9, beta_2=0.9999, epsilon=1e-6,
          use_clipping=True, **options):
    """Taniguchi et al. (2024), Algorithm 1, with the clipped variant's bound (t - 1)^(1/4).

    t = 1: v = g^2 (no move). Then n = g / max(sqrt(v), eps), clipped to +-(t - 1)^(1/4)
    if use_clipping; m = b1 m + (1 - b1) n; v = b2 v + (1 - b2) g^2; w -= lr m.
    """

    def update(w, g, s, lr, t, i):
        if t == 1:
            s["v"] = g**2
            return w
        n = g / np.maximum(np.sqrt(s["v"]), epsilon)
        if use_clipping:
            n = np.clip(n, -((t - 1) ** 0.25), (t - 1) ** 0.25)
        s["m"] = beta_1 * s["m"] + (1 - beta_1) * n
        s["v"] = beta_2 * s["v"] + (1 - beta_2) * g**2
        return w - lr * s["m"]

    return _run(_zeros("m", "v"), update, params, grads_seq, learning_rate, **options)
