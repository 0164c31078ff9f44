"""Multi-process tests: N processes of one worker script, joined by `jax.distributed`.

`harness.run_workers` launches them on 127.0.0.1; `worker.py` holds what every worker
script shares (start-up, result files). See `tests/test_multiprocess.py`.
"""
