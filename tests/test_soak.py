"""Soak (issue #8 section 7): 10,000 stateful steps compile once and hold their memory.

A loss-scaled Adam on a small two-layer model runs 10,000 `apply_gradients` calls, with a
non-finite gradient every 100 steps (skipped, scale halved) and a new learning rate every
500 (no recompile). After a warm-up, the number of compiled executables of the step, the
number of live device arrays and the process's resident memory must not grow.

Marked `slow`; it takes a few seconds of CPU (well under the 2 minutes allowed).
"""

from __future__ import annotations

import gc
import resource

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer

STEPS = 10_000
WARMUP = 500
RSS_SLACK = 16 * 2**20   # bytes: noise is ~0.2 MiB; a leak of 2 KiB per step is 19 MiB


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak (getrusage), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow
def test_ten_thousand_steps_compile_once_and_hold_memory():
    rng = np.random.default_rng(0)
    shapes = [(16, 8), (8,), (8, 4), (4,)]
    variables = [kopt.Variable(rng.standard_normal(s).astype(np.float32), name=f"w{i}")
                 for i, s in enumerate(shapes)]
    grads = [[jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
             for _ in range(7)]
    bad = [g.at[...].set(jnp.inf) if i == 0 else g for i, g in enumerate(grads[0])]
    opt = LossScaleOptimizer(kopt.optimizers.Adam(1e-3), initial_scale=2.0**15,
                             dynamic_growth_steps=50)

    def step(t):
        if t % 500 == 499:
            opt.learning_rate = 1e-3 * (1 + (t // 500) % 3)
        opt.apply_gradients(zip(bad if t % 100 == 99 else grads[t % 7], variables))

    for t in range(WARMUP):
        step(t)
    jax.block_until_ready([v.value for v in variables])
    gc.collect()
    cache, live, rss = opt._step._cache_size(), len(jax.live_arrays()), _rss_bytes()

    for t in range(WARMUP, STEPS):
        step(t)
    jax.block_until_ready([v.value for v in variables])
    gc.collect()

    assert int(opt.iterations) == STEPS - STEPS // 100   # every non-finite step skipped
    assert opt._step._cache_size() == cache == 1
    assert len(jax.live_arrays()) <= live + 4   # a leak would be thousands
    growth = _rss_bytes() - rss
    print(f"soak: {STEPS} steps, resident memory grew by {growth / 2**20:.1f} MiB after warm-up")
    assert growth < RSS_SLACK, f"resident memory grew by {growth / 2**20:.1f} MiB"
    assert all(np.isfinite(v.numpy()).all() for v in variables)
