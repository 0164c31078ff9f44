"""Run each worker script once per pytest session, also under pytest-xdist.

Several tests read the results of one worker run. Under pytest-xdist each xdist worker
has its own session fixtures, so runs are made once for all of them and stored under the
session's shared temporary root, each behind a file lock: the first worker to ask makes
it, and the others read its results (or its stored failure, raised again). A worker that
finds a run it needs being made by another first makes the runs nobody has started, so
both xdist workers keep busy; only then does it wait.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from tests.multiprocess.harness import WorkerError

Results = list[dict[str, np.ndarray]]
Run = Callable[[Path], Results]


def _make(root: Path, name: str, run: Run, block: bool) -> bool:
    """Make run `name` unless it is made already; False if another worker is making
    it and `block` is False."""
    with open(root / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        try:
            status = root / f"{name}.json"
            if status.exists():
                return True
            out_dir = root / name
            if out_dir.exists():
                shutil.rmtree(out_dir)
            try:
                results = run(out_dir)
            except WorkerError as e:
                status.write_text(json.dumps({"error": str(e)}))
                return True
            for i, r in enumerate(results):
                np.savez(out_dir / f"cached_{i}.npz", **r)
            status.write_text(json.dumps({"count": len(results)}))
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_run(root: Path, name: str, runs: Mapping[str, Run]) -> Results:
    """The results of `runs[name](out_dir)`, made once for all xdist workers sharing
    `root`; raises its `WorkerError` if it failed."""
    root.mkdir(parents=True, exist_ok=True)
    if not _make(root, name, runs[name], block=False):
        for other, run in runs.items():   # help with what nobody has started
            if other != name:
                _make(root, other, run, block=False)
        _make(root, name, runs[name], block=True)
    info = json.loads((root / f"{name}.json").read_text())
    if "error" in info:
        raise WorkerError(info["error"])
    loaded = []
    for i in range(info["count"]):
        with np.load(root / name / f"cached_{i}.npz") as f:
            loaded.append(dict(f))
    return loaded
