"""Run each worker script once per pytest session, also under pytest-xdist.

Several tests read the results of one worker run. Under pytest-xdist each xdist worker
has its own session fixtures, so the first one to ask runs the workers and stores the
results under the session's shared temporary root; the others wait on a file lock and
read them (or the stored failure, re-raised).
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.multiprocess.harness import WorkerError

Results = list[dict[str, np.ndarray]]


def cached_run(root: Path, name: str, run: Callable[[Path], Results]) -> Results:
    """`run(out_dir)` once for all xdist workers sharing `root`; its results or error."""
    root.mkdir(parents=True, exist_ok=True)
    out_dir = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            status = root / f"{name}.json"
            if not status.exists():
                if out_dir.exists():
                    shutil.rmtree(out_dir)
                try:
                    results = run(out_dir)
                except WorkerError as e:
                    status.write_text(json.dumps({"error": str(e)}))
                    raise
                for i, r in enumerate(results):
                    np.savez(out_dir / f"cached_{i}.npz", **r)
                status.write_text(json.dumps({"count": len(results)}))
            info = json.loads(status.read_text())
            if "error" in info:
                raise WorkerError(info["error"])
            loaded = []
            for i in range(info["count"]):
                with np.load(out_dir / f"cached_{i}.npz") as f:
                    loaded.append(dict(f))
            return loaded
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
