"""`benchmarks/step.py --quick` runs, and its rows carry the compile-time and bound columns.

Not a timed test: the figures are only checked for consistency with each other."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "step.py"), "--quick",
         "--trees", "small1000", "--opts", "adam", "--impls", "optax,kopt,bound",
         "--steps", "3", "--min-steps", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_quick_rows_have_compile_and_bound_columns(quick_run):
    result, stdout = quick_run
    rows = {r["impl"]: r for r in result["rows"]}
    assert set(rows) == {"optax", "kopt", "bound"}
    assert not result["errors"]
    for impl, r in rows.items():
        assert r["compile_s"] == pytest.approx(max(r["first_step_s"] - r["step_s"], 0.0)), impl
        assert r["x_bound"] == pytest.approx(r["step_s"] / rows["bound"]["step_s"]), impl
        assert r["compile_x_optax"] == pytest.approx(r["compile_s"] / rows["optax"]["compile_s"])
    assert rows["optax"]["compile_x_optax"] == pytest.approx(1.0)
    assert rows["bound"]["x_bound"] == pytest.approx(1.0)
    header = result["table"].splitlines()[0]
    assert "x bound" in header and "compile x optax" in header
    assert "Targets (issue 17" in stdout
