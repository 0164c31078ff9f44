"""Launch N processes of one worker script on 127.0.0.1, joined by `jax.distributed`.

Each process gets its own CPU devices (`--xla_force_host_platform_device_count`), gloo
collectives and the coordinator's address in environment variables that
`tests.multiprocess.worker.start()` reads. A run:

- stops by itself: every process is killed when the run exceeds `timeout`, and all are
  killed as soon as one fails (the others would wait for it in a collective);
- kills the children's whole process groups (each worker starts its own session), so a
  child's own subprocesses do not outlive it;
- raises `WorkerError` with each process's exit status, stdout and stderr;
- returns each process's results, the `.npz` files the workers wrote to `out_dir`.

The coordinator port is a free port chosen by the OS; if the coordinator still fails to
bind it (another test took it in between, e.g. under pytest-xdist), the run is retried
once on a new port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]   # the repository root (kopt is imported from it)
DEFAULT_TIMEOUT = 240.0   # per run; a loaded shared machine can take minutes

# What the coordinator prints (gRPC) when its port was taken in between.
_PORT_TAKEN = ("failed to add port", "address already in use")

__all__ = ["WorkerError", "free_port", "run_workers", "run_single", "ROOT"]


class WorkerError(AssertionError):
    """A worker run failed or timed out; the message holds every process's output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when asked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, coordinator: str | None, num_processes: int, process_id: int,
         out_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    if not any(f.startswith("--xla_backend_optimization_level") for f in flags):
        # Workers compile many small programs and run each a few times: LLVM's
        # optimisations would take most of their time (about 40% less without).
        flags.append("--xla_backend_optimization_level=0")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    env["KERAS_BACKEND"] = "jax"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                         env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["KOPT_MP_NUM_PROCESSES"] = str(num_processes)
    env["KOPT_MP_PROCESS_ID"] = str(process_id)
    env["KOPT_MP_OUT"] = str(out_dir)
    if coordinator is None:
        env.pop("KOPT_MP_COORDINATOR", None)
    else:
        env["KOPT_MP_COORDINATOR"] = coordinator
    # One compute thread per process: the processes share few cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _kill(procs: list[subprocess.Popen]) -> None:
    """Kill each worker's whole process group (also after the worker itself exited, so
    that what it started does not outlive it)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # its own session: pgid == pid
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def _tail(path: Path, limit: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _report(what: str, logs: list[tuple[Path, Path]], codes: list[int | None]) -> str:
    parts = [what]
    for i, ((out, err), code) in enumerate(zip(logs, codes)):
        parts.append(f"--- process {i}: exit status {code} ---")
        parts.append(f"[stdout]\n{_tail(out)}")
        parts.append(f"[stderr]\n{_tail(err)}")
    return "\n".join(parts)


def _launch(script: Path, args: list[str], num_processes: int, devices: int, out_dir: Path,
            timeout: float) -> tuple[bool, str]:
    """One attempt. Returns (ok, report); `report` also says if the port was taken."""
    coordinator = f"127.0.0.1:{free_port()}" if num_processes > 1 else None
    logs, procs = [], []
    try:
        for i in range(num_processes):
            out, err = out_dir / f"stdout_{i}.txt", out_dir / f"stderr_{i}.txt"
            logs.append((out, err))
            with open(out, "wb") as fo, open(err, "wb") as fe:
                procs.append(subprocess.Popen(
                    [sys.executable, str(script), *args], cwd=ROOT, stdout=fo, stderr=fe,
                    env=_env(devices, coordinator, num_processes, i, out_dir),
                    start_new_session=True))
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes):
                return True, ""
            if any(c not in (None, 0) for c in codes):
                _kill(procs)
                return False, _report(f"A worker of {script.name} failed:",
                                      logs, [p.returncode for p in procs])
            if time.monotonic() > deadline:
                _kill(procs)
                return False, _report(f"{script.name} timed out after {timeout:.0f} s "
                                      "(all processes killed):", logs,
                                      [p.returncode for p in procs])
            time.sleep(0.1)
    finally:
        _kill(procs)


def _load(out_dir: Path, num_processes: int) -> list[dict[str, np.ndarray]]:
    results = []
    for i in range(num_processes):
        with np.load(out_dir / f"result_{i}.npz") as f:
            results.append(dict(f))
    return results


def run_workers(script: str | Path, num_processes: int = 2, devices_per_process: int = 4,
                args: list[str] = (), timeout: float = DEFAULT_TIMEOUT,
                out_dir: str | Path | None = None) -> list[dict[str, np.ndarray]]:
    """Run `script` as `num_processes` processes and return each one's results.

    Args:
      script: the worker script (it calls `tests.multiprocess.worker.start()` first).
      num_processes: how many processes; 1 runs the script alone, without
        `jax.distributed`.
      devices_per_process: CPU devices each process has.
      args: command-line arguments, the same for every process.
      timeout: seconds after which every process is killed and `WorkerError` raised.
      out_dir: where the workers write (results, logs, checkpoints); a new temporary
        directory by default. It is passed to the workers as `KOPT_MP_OUT`.

    Returns:
      `results[i]` is the dict of arrays process `i` saved with `worker.save`.
    """
    script = Path(script)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="kopt_mp_"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ""
    for _ in range(2):
        ok, report = _launch(script, list(args), num_processes, devices_per_process, out_dir,
                             timeout)
        if ok:
            return _load(out_dir, num_processes)
        if not any(m in report.lower() for m in _PORT_TAKEN):
            break
    raise WorkerError(report)


def run_single(script: str | Path, devices: int = 8, args: list[str] = (),
               timeout: float = DEFAULT_TIMEOUT,
               out_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Run `script` as one process on `devices` CPU devices; return its results."""
    return run_workers(script, 1, devices, args, timeout, out_dir)[0]
