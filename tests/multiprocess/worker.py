"""What every worker script shares: start-up from the harness's environment, results.

A worker script does::

    from tests.multiprocess import worker
    worker.start()          # jax.distributed.initialize when there are several processes
    ...
    worker.save({"name": array, ...})   # this process's results, read by the harness
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def start() -> None:
    """Configure JAX as the harness asks and join the other processes.

    Call it before any JAX computation. With one process it only sets the strict
    settings of `tests/conftest.py`.
    """
    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    n = num_processes()
    if n > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=os.environ["KOPT_MP_COORDINATOR"],
                                   num_processes=n, process_id=process_id(),
                                   initialization_timeout=60)


def num_processes() -> int:
    return int(os.environ.get("KOPT_MP_NUM_PROCESSES", "1"))


def process_id() -> int:
    return int(os.environ.get("KOPT_MP_PROCESS_ID", "0"))


def out_dir() -> Path:
    return Path(os.environ["KOPT_MP_OUT"])


def save(results: dict[str, np.ndarray]) -> None:
    """Write this process's results where the harness reads them (bfloat16 as float32)."""
    arrays = {k: np.asarray(v) for k, v in results.items()}
    # npz keeps numpy's own dtypes only: bfloat16 (ml_dtypes) goes as float32, exactly.
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "V" else v for k, v in arrays.items()}
    tmp = out_dir() / f"result_{process_id()}.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(out_dir() / f"result_{process_id()}.npz")
