"""Plot every kopt learning-rate schedule over 1,000 steps into docs/schedules.png.

    pip install matplotlib && python docs/plot_schedules.py
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kopt import schedules as S  # noqa: E402

STEPS = 1000
OUT = Path(__file__).with_name("schedules.png")

# One panel per schedule: (title, [(label, schedule), ...]).
PANELS = [
    ("ExponentialDecay", [
        ("smooth", S.ExponentialDecay(1.0, decay_steps=200, decay_rate=0.5)),
        ("staircase", S.ExponentialDecay(1.0, decay_steps=200, decay_rate=0.5, staircase=True)),
    ]),
    ("PiecewiseConstantDecay", [
        ("", S.PiecewiseConstantDecay([300, 600, 800], [1.0, 0.5, 0.2, 0.05])),
    ]),
    ("PolynomialDecay", [
        ("power=1", S.PolynomialDecay(1.0, decay_steps=800, end_learning_rate=0.1)),
        ("power=2", S.PolynomialDecay(1.0, decay_steps=800, end_learning_rate=0.1, power=2.0)),
        ("cycle, power=0.5", S.PolynomialDecay(1.0, decay_steps=300, end_learning_rate=0.1, power=0.5,
                                               cycle=True)),
    ]),
    ("InverseTimeDecay", [
        ("smooth", S.InverseTimeDecay(1.0, decay_steps=100, decay_rate=0.5)),
        ("staircase", S.InverseTimeDecay(1.0, decay_steps=100, decay_rate=0.5, staircase=True)),
    ]),
    ("CosineDecay", [
        ("alpha=0.1", S.CosineDecay(1.0, decay_steps=1000, alpha=0.1)),
        ("with warmup", S.CosineDecay(0.0, decay_steps=900, warmup_target=1.0, warmup_steps=100)),
    ]),
    ("CosineDecayRestarts", [
        ("t_mul=2", S.CosineDecayRestarts(1.0, first_decay_steps=100)),
        ("t_mul=1, m_mul=0.8", S.CosineDecayRestarts(1.0, first_decay_steps=200, t_mul=1.0, m_mul=0.8)),
    ]),
    ("Constant", [("", S.Constant(1.0))]),
    ("LinearWarmup", [
        ("into ExponentialDecay", S.LinearWarmup(S.ExponentialDecay(1.0, 200, 0.5), warmup_steps=150)),
    ]),
    ("WarmupCosineDecay", [
        ("", S.WarmupCosineDecay(1.0, warmup_steps=100, decay_steps=800, end_learning_rate=0.05)),
    ]),
    ("OneCycle", [
        ("cosine", S.OneCycle(1.0, total_steps=1000)),
        ("linear", S.OneCycle(1.0, total_steps=1000, anneal_strategy="linear")),
    ]),
    ("WarmupStableDecay", [
        (shape, S.WarmupStableDecay(1.0, warmup_steps=100, stable_steps=600, decay_steps=300,
                                    decay_shape=shape))
        for shape in ("linear", "cosine", "1-sqrt")
    ]),
    ("JoinSchedules", [
        ("warmup | constant | exponential", S.JoinSchedules(
            [S.LinearWarmup(1.0, 100), 0.6, S.ExponentialDecay(0.6, 100, 0.5)], [100, 500])),
    ]),
]


def main() -> None:
    steps = jnp.arange(STEPS + 1, dtype=jnp.int32)
    cols = 4
    rows = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), sharex=True)
    for ax, (title, curves) in zip(axes.flat, PANELS):
        for label, sched in curves:
            ax.plot(steps, sched(steps), label=label or None, linewidth=1.6)
        ax.set_title(title, fontsize=11)
        ax.set_ylim(-0.05, 1.08)
        ax.grid(alpha=0.3)
        if any(label for label, _ in curves):
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate")
    fig.suptitle("kopt.schedules (rates relative to a peak of 1.0)", fontsize=13)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
