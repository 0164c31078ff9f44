"""Worker for the harness's own tests: it fails or hangs, without importing JAX.

Usage: worker_misbehave.py fail1|hang
- `fail1`: process 1 exits with status 3 after printing; the others hang.
- `hang`: every process hangs.
Each process first starts a grandchild (`sleep`) and writes its own and the grandchild's
pids to `pids_<process id>.txt`, so the test can check that none survives.
"""

import os
import subprocess
import sys
import time

from tests.multiprocess import worker

mode = sys.argv[1]
child = subprocess.Popen(["sleep", "600"])
(worker.out_dir() / f"pids_{worker.process_id()}.txt").write_text(f"{os.getpid()} {child.pid}")
print(f"process {worker.process_id()} of {worker.num_processes()} started", flush=True)
if mode == "fail1" and worker.process_id() == 1:
    # Fail while the others run: wait (bounded) until process 0 has started, or a loaded
    # machine may see the harness stop it before it printed anything.
    deadline = time.monotonic() + 20
    while not (worker.out_dir() / "pids_0.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)   # its print follows the file
    print("process 1 fails on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
time.sleep(600)
