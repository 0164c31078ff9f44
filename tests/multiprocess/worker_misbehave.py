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
    print("process 1 fails on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
time.sleep(600)
