"""`examples/multiprocess_train.py --num-processes 2` starts its own 2 processes and
trains with the functional layer and the stateful facade: both must agree, and the loss
must fall."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.multiprocess.harness import ROOT


def test_example_trains_across_two_processes():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "device_count" not in f)   # the example's own 4 each
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multiprocess_train.py"),
         "--num-processes", "2", "--steps", "21", "--timeout", "150"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 process(es), 8 devices, mesh {'data': 4, 'model': 2}" in out, out
    losses = {kind: [float(x) for x in re.findall(rf"{kind} +step +\d+ +loss ([\d.]+)", out)]
              for kind in ("functional", "stateful")}
    assert len(losses["functional"]) == 2 and losses["functional"] == losses["stateful"], out
    assert losses["functional"][-1] < 0.5 * losses["functional"][0], out
    assert "get_weights: 7 arrays, iterations 21, m of w1 (16, 32)" in out, out
    diff = float(re.search(r"agree: max \|difference\| = (\S+)", out).group(1))
    assert diff <= 1e-6, out
    for i in range(2):
        assert f"process {i}: w1 parts held here: 2 of shape (16, 16)" in out, out
