"""#17.3: `benchmarks/train.py --quick` runs end to end (a smoke test, not a timing).

It runs in its own process, as a user runs it, and must write a JSON with one row per
(model, implementation), each with a step time, a ratio to its baseline, a first-step
time and a finite final loss that agrees across implementations (same data, same
initial parameters, Adam in each), plus the #17 target checks.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_train_benchmark_quick_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "train.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "target cnn" in proc.stdout and "target transformer" in proc.stdout
    result = json.loads(out.read_text())
    rows = {(r["model"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {
        *(("cnn", i) for i in ("optax", "kopt", "kopt-apply", "kopt-minimize",
                               "kopt-minimize-nnx")),
        *(("transformer", i) for i in ("optax", "kopt", "kopt-apply", "kopt-minimize")),
        ("keras-fit", "keras"), ("keras-fit", "kopt-keras")}
    for key, row in rows.items():
        assert row["step_ms"] > 0 and row["first_step_s"] > 0 and row["timed_steps"] > 0, key
        assert math.isfinite(row["final_loss"]), key
        assert row["x_base"] > 0, key
    for model, base in (("cnn", "optax"), ("transformer", "optax"), ("keras-fit", "keras")):
        assert rows[(model, base)]["x_base"] == 1.0
        losses = [r["final_loss"] for (m, _), r in rows.items() if m == model]
        # Same batches, same start, Adam everywhere: the losses agree (optax puts epsilon
        # elsewhere, which moves the last digits only).
        assert max(losses) - min(losses) < 1e-2 * max(abs(x) for x in losses), (model, losses)
    # kopt's own rows are the same update: the stateful ones match the functional one.
    for model in ("cnn", "transformer"):
        want = rows[(model, "kopt")]["final_loss"]
        for impl in ("kopt-apply", "kopt-minimize"):
            assert abs(rows[(model, impl)]["final_loss"] - want) <= 1e-5 * abs(want), impl
    targets = {t["model"]: t for t in result["meta"]["targets"]}
    assert set(targets) == {"cnn", "transformer"}
    assert all(t["met"] == (t["ratio"] <= t["target"]) for t in targets.values())
    assert result["meta"]["quick"] is True
