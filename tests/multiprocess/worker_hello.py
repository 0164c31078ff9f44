"""Worker: join the other processes and report who is who (the harness's own tests)."""

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402

worker.save({"process": jax.process_index(), "processes": jax.process_count(),
             "devices": jax.device_count(), "local_devices": jax.local_device_count()})
