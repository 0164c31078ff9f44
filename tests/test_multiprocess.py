"""kopt across processes: 2 processes x 4 CPU devices, joined by `jax.distributed`.

Each worker script (`tests/multiprocess/worker_*.py`) runs many cases in one process pair,
and once more as one process on 8 devices: both build the same global mesh over 8
devices and must compute the same numbers. A run is made once per session and shared by
the tests reading it, also under pytest-xdist (`tests/multiprocess/shared.py`).
See `tests/multiprocess/harness.py` for how processes are started and stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import kopt.functional as kf
from tests.multiprocess.harness import WorkerError, run_single, run_workers
from tests.multiprocess.shared import cached_run

HERE = Path(__file__).parent / "multiprocess"
LAYOUTS = ["dp", "mp", "2d", "zero1"]
CORE = ["adam", "adamw_clip", "lion", "adafactor", "partition", "adam_bf16", "lion_bf16"]
OPTIONAL = ["muon", "adam_int8"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    # Under xdist every worker's basetemp is a subfolder of this run's shared one.
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "kopt_multiprocess"


def _runs(root: Path) -> dict:
    """Every worker run the tests read, by name: `out_dir -> [results per process]`.

    Each is made once per session (`cached_run`); under xdist an idle worker makes the
    runs nobody has started yet.
    """
    functional, stateful = HERE / "worker_functional.py", HERE / "worker_stateful.py"
    checkpoint = HERE / "worker_checkpoint.py"
    layouts = [",".join(LAYOUTS)]

    def restore_on_four(out_dir):
        cached_run(root, "checkpoint_2x4", runs)   # the checkpoint to restore
        ckpt = str(root / "checkpoint_2x4" / "ckpt")
        return [run_single(checkpoint, 4, ["restore", "--ckpt", ckpt], out_dir=out_dir)]

    auto = ["mp,2d", "--axes", "auto", "--cases", "optional"]
    runs = {
        "functional_2x4": lambda d: run_workers(functional, 2, 4, layouts, out_dir=d),
        "functional_1x8": lambda d: [run_single(functional, 8, layouts, out_dir=d)],
        "functional_auto_2x4": lambda d: run_workers(functional, 2, 4, auto, out_dir=d),
        "functional_auto_1x8": lambda d: [run_single(functional, 8, auto, out_dir=d)],
        "checkpoint_2x4": lambda d: run_workers(checkpoint, 2, 4, ["save"], out_dir=d),
        "stateful_2x4": lambda d: run_workers(stateful, 2, 4, out_dir=d),
        "stateful_1x8": lambda d: [run_single(stateful, 8, out_dir=d)],
        "checkpoint_1x4": restore_on_four,
        "local_2x4": lambda d: run_workers(HERE / "worker_local.py", 2, 4, out_dir=d,
                                           timeout=120),
        "split_2x4": lambda d: run_workers(HERE / "worker_split_state.py", 2, 4, out_dir=d,
                                           timeout=150),
        "split_1x8": lambda d: [run_single(HERE / "worker_split_state.py", 8, out_dir=d,
                                           timeout=150)],
    }
    return runs


# ------------------------------------------------------------------ the harness itself
@pytest.mark.parametrize("mode", ["fail1", "hang"])
def test_harness_stops_every_process_and_shows_their_output(tmp_path, mode):
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_workers(HERE / "worker_misbehave.py", 2, 1, args=[mode],
                    timeout=30 if mode == "fail1" else 3,
                    out_dir=tmp_path)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 30, elapsed
    assert "process 0 of 2 started" in message and "process 1 of 2 started" in message
    if mode == "fail1":
        assert "failed" in message and "exit status 3" in message
        assert "process 1 fails on purpose" in message
        assert elapsed < 15   # it did not wait for the timeout
    else:
        assert "timed out after 3 s" in message
    for i in range(2):
        pids = [int(p) for p in (tmp_path / f"pids_{i}.txt").read_text().split()]
        deadline = time.monotonic() + 5
        while any(map(_pid_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_pid_alive, pids)), f"process {i} or its child survived: {pids}"


def test_harness_retries_when_the_coordinator_port_was_taken(tmp_path, monkeypatch):
    import socket

    from tests.multiprocess import harness

    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        ports, real = [taken.getsockname()[1]], harness.free_port
        monkeypatch.setattr(harness, "free_port", lambda: ports.pop() if ports else real())
        results = harness.run_workers(HERE / "worker_hello.py", 2, 3, out_dir=tmp_path)
    assert not ports   # the taken port was tried first
    assert [int(r["process"]) for r in results] == [0, 1]
    for r in results:
        assert int(r["processes"]) == 2 and int(r["devices"]) == 6
        assert int(r["local_devices"]) == 3


# ------------------------------------------------------------------ functional layer
@pytest.fixture(scope="session")
def functional_runs(runs_root):
    """(one process x 8 devices, [process 0, process 1] of 2 x 4), Explicit mesh axes."""
    one = cached_run(runs_root, "functional_1x8", _runs(runs_root))
    return one[0], cached_run(runs_root, "functional_2x4", _runs(runs_root))


@pytest.fixture(scope="session")
def functional_auto_runs(runs_root):
    """As `functional_runs`, with Auto mesh axes, for OPTIONAL on layouts mp and 2d."""
    one = cached_run(runs_root, "functional_auto_1x8", _runs(runs_root))
    return one[0], cached_run(runs_root, "functional_auto_2x4", _runs(runs_root))


def _case_keys(results, layout, case):
    marker = f"[{case!r}]"
    return sorted(k for k in results if k.startswith(f"{layout}/") and "/status/" not in k
                  and k.split("/", 1)[1].startswith((f"params{marker}", f"state{marker}")))


@pytest.mark.parametrize("case", CORE + OPTIONAL)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_functional_two_processes_equal_one(functional_runs, layout, case):
    """4 steps over the global 8-device mesh: 2 processes x 4 devices give the numbers of
    1 process x 8 devices, to float32 rounding, and the same on both processes."""
    one, (p0, p1) = functional_runs
    if case in OPTIONAL:
        statuses = {str(r[f"{layout}/status/{case}"]) for r in (one, p0, p1)}
        assert len(statuses) == 1, statuses   # the same outcome everywhere
        status = statuses.pop()
        assert status == "ok", f"{case} on layout {layout} raised {status}"
    _assert_same_numbers(one, p0, p1, layout, case)


@pytest.mark.parametrize("case", OPTIONAL)
@pytest.mark.parametrize("layout", ["mp", "2d"])
def test_functional_auto_axes_split_params(functional_auto_runs, layout, case):
    """With Auto mesh axes, Muon and int8 state run on params split over "model", and 2
    processes equal 1."""
    one, (p0, p1) = functional_auto_runs
    for r in (one, p0, p1):
        assert str(r[f"{layout}/status/{case}"]) == "ok", str(r[f"{layout}/status/{case}"])
    _assert_same_numbers(one, p0, p1, layout, case)


def _assert_same_numbers(one, p0, p1, layout, case):
    keys = _case_keys(one, layout, case)
    assert len(keys) >= 5, keys   # every param, and state
    assert keys == _case_keys(p0, layout, case)
    for k in keys:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)   # every process: the same
        a, b = p0[k].astype(np.float64), one[k].astype(np.float64)
        assert a.shape == b.shape, k
        if not b.size:
            continue
        scale = max(float(np.max(np.abs(b))), 1e-30)
        err = np.abs(a - b) / scale
        if case.endswith("_bf16"):
            # A bfloat16 state element may round (stochastically) the other way when its
            # float32 value differs in the last bits (gradients summed in another order):
            # one bfloat16 step of that element.
            err = np.maximum(err - 2.0 ** -7 * np.abs(b) / scale, 0)
        worst = float(np.max(err))
        assert worst <= 2e-6, f"{k}: max |2 processes - 1 process| / max |x| = {worst:.3g}"


# ------------------------------------------------------------------ stateful facade
@pytest.fixture(scope="session")
def stateful_runs(runs_root):
    """(one process x 8 devices, [process 0, process 1] of 2 x 4): see worker_stateful."""
    one = cached_run(runs_root, "stateful_1x8", _runs(runs_root))
    return one[0], cached_run(runs_root, "stateful_2x4", _runs(runs_root))


def _entries(results, prefix):
    keys = sorted((k for k in results if k.startswith(prefix)),
                  key=lambda k: (len(k), k))   # weights/2 before weights/10
    assert keys, prefix
    return [results[k] for k in keys]


def _assert_close_lists(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, i, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=f"{what} entry {i}")


def test_get_weights_gathers_full_arrays_on_every_process(stateful_runs):
    one, (p0, p1) = stateful_runs
    weights = _entries(p0, "weights/")
    assert len(weights) == 1 + 2 * 3   # iterations, then m and v of 3 variables
    assert int(weights[0]) == 3 and weights[1].shape == (16, 8)
    for k in p0:   # every process holds the same full host arrays
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    _assert_close_lists(weights, _entries(one, "weights/"), "get_weights")


@pytest.mark.parametrize("kind", ["numpy", "asarray"])
def test_variable_numpy_gathers_like_get_weights(stateful_runs, kind):
    one, (p0, p1) = stateful_runs
    got = _entries(p0, f"{kind}/")
    assert [a.shape for a in got] == [(8,), (5,), (16, 8)]   # bias, gain, kernel
    _assert_close_lists(got, _entries(one, f"{kind}/"), kind)
    _assert_close_lists(_entries(p1, f"{kind}/"), got, kind)


def test_get_weights_of_bfloat16_state_across_processes(stateful_runs):
    one, (p0, p1) = stateful_runs
    dtypes = str(p0["bf16/dtypes"]).split(",")
    assert dtypes[0] == "int32" and "uint32" in dtypes and dtypes.count("bfloat16") == 6
    assert str(one["bf16/dtypes"]) == str(p0["bf16/dtypes"])
    got, want = _entries(p0, "bf16/weights/"), _entries(one, "bf16/weights/")
    _assert_close_lists(_entries(p1, "bf16/weights/"), got, "bf16 get_weights")
    for i, (a, b) in enumerate(zip(got, want)):   # one bfloat16 rounding step apart at most
        np.testing.assert_allclose(a, b, rtol=2.0 ** -7, atol=1e-7, err_msg=f"entry {i}")
    assert all(bool(r["bf16/round_trip"]) for r in (one, p0, p1))


def test_set_weights_reshards_full_host_arrays(stateful_runs):
    one, (p0, p1) = stateful_runs
    restored = _entries(p0, "restored/")
    assert int(restored[0]) == 1   # the snapshot taken after step 1
    assert bool(p0["set_kept_shardings"]) and bool(p1["set_kept_shardings"])
    _assert_close_lists(restored, _entries(one, "restored/"), "after set_weights")
    # The step after set_weights continues as in one process.
    _assert_close_lists(_entries(p0, "after_restore/"), _entries(one, "after_restore/"),
                        "step after set_weights")


def test_set_weights_refuses_other_values_on_another_process(stateful_runs):
    _, (p0, p1) = stateful_runs
    for r in (p0, p1):
        message = str(r["mismatch_error"])
        assert "differ between processes" in message and "[1]" in message, message
        assert bool(r["mismatch_unchanged"])


def test_pickling_across_processes_points_to_orbax(stateful_runs):
    one, (p0, p1) = stateful_runs
    assert str(one["pickle_opt"]) == "ok" and str(one["pickle_var"]) == "ok"   # 1 process
    for r in (p0, p1):
        for key, what in [("pickle_opt", "optimizer 'adam'"), ("pickle_var", "Variable 'kernel'")]:
            message = str(r[key])
            assert message.startswith("TypeError: Cannot pickle " + what), message
            assert "orbax" in message


def test_local_view_holds_this_process_parts(stateful_runs):
    one, (p0, p1) = stateful_runs
    # The (16, 8) kernel split 4 x 2 over 8 devices: all 8 parts in one process,
    # 4 in each of two.
    assert int(one["local_parts"]) == 8
    assert int(p0["local_parts"]) == 4 and int(p1["local_parts"]) == 4
    assert all(bool(r["local_view_ok"]) for r in (one, p0, p1))


# ------------------------------------------------------------------ orbax checkpoints
@pytest.fixture(scope="session")
def checkpoint_runs(runs_root):
    """([process 0, process 1] of `save` on 2 x 4, `restore` of their checkpoint on 1 x 4)."""
    two = cached_run(runs_root, "checkpoint_2x4", _runs(runs_root))
    return two, cached_run(runs_root, "checkpoint_1x4", _runs(runs_root))[0]


def _continued(results):
    keys = sorted(k for k in results if k.startswith("continued/"))
    assert len(keys) >= 10, keys   # functional params, stateful variables and weights
    return keys


def test_orbax_restore_across_processes_continues_identically(checkpoint_runs):
    (p0, p1), _ = checkpoint_runs
    for r in (p0, p1):
        assert int(r["restored_iterations"]) == 2
        for k in _continued(r):
            resumed = "resumed/" + k.split("/", 1)[1]
            np.testing.assert_array_equal(r[resumed], r[k], err_msg=resumed)
            np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    assert int(p0["continued/f_count"]) == 5 and int(p0["continued/s_weights/0"]) == 5


def test_orbax_restores_a_two_process_checkpoint_onto_four_devices(checkpoint_runs):
    (p0, _), four = checkpoint_runs
    assert int(four["restored_iterations"]) == 2
    for k in _continued(p0):
        resumed = "resumed/" + k.split("/", 1)[1]
        np.testing.assert_allclose(four[resumed], p0[k], rtol=2e-6, atol=1e-7, err_msg=resumed)


def test_a_state_placed_with_state_shardings_saves_across_processes(checkpoint_runs):
    (p0, p1), _ = checkpoint_runs
    assert str(p0["eager_placed_save"]) == "ok" and str(p1["eager_placed_save"]) == "ok"


def test_an_eager_init_state_saves_across_processes(checkpoint_runs):
    """An eager `tx.init(params)` puts its counters and buckets on the params' mesh, so
    orbax saves it across processes as it is."""
    (p0, p1), _ = checkpoint_runs
    assert str(p0["eager_save"]) == "ok", str(p0["eager_save"])[:300]


# ------------------------------------------------------------------ params without a mesh
def test_state_of_params_without_a_mesh_stays_on_each_process(runs_root):
    """Each process trains its own params, not on a mesh (host arrays, arrays on one of its
    devices, abstract params): `state_shardings` puts each one's state on its own devices
    (before, on process 0's first device, which process 1 cannot use: it crashed)."""
    p0, p1 = cached_run(runs_root, "local_2x4", _runs(runs_root))
    for case, device in [("numpy", 0), ("single", 1), ("abstract", 0)]:
        for r in (p0, p1):
            assert str(r[f"{case}/status"]) == "ok", str(r[f"{case}/status"])[:500]
            assert bool(r[f"{case}/local"]), case
            # The step counter on the params' device, or the process's own first one.
            assert int(r[f"{case}/device"]) == device, case
        state0 = [p0[k] for k in sorted(p0) if k.startswith(f"{case}/state/")]
        state1 = [p1[k] for k in sorted(p1) if k.startswith(f"{case}/state/")]
        # As many leaves as the same state made in one process (small leaves share a bucket).
        expected = jax.eval_shape(kf.adam(1e-2).init, {"w": jax.ShapeDtypeStruct((4, 3), np.float32),
                                                         "b": jax.ShapeDtypeStruct((3,), np.float32)})
        assert len(state0) == len(state1) == len(jax.tree.leaves(expected)), case
        assert int(state0[0]) == 2 and int(state1[0]) == 2   # both stepped twice
        # Their own models: different moments (process-seeded params and gradients).
        assert not np.array_equal(state0[-1], state1[-1]), case


# ------------------------------------------------------------------ ZeRO-1 with bucketing
@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_zero1_with_bucketing_reads_back_across_processes(runs_root, axes):
    """`shard_state` splits the slots' shared bucket over "data"; after 3 steps each slot
    is read eagerly with `to_tree()` (under Explicit axes that raised ShardingTypeError):
    2 processes give the numbers of 1 process, each device holding 1/8 of the bucket."""
    one = cached_run(runs_root, "split_1x8", _runs(runs_root))[0]
    p0, p1 = cached_run(runs_root, "split_2x4", _runs(runs_root))
    for r in (one, p0, p1):
        assert str(r[f"{axes}/info/spec"]) == "P('data',)"
        assert set(r[f"{axes}/info/local"].tolist()) == {10}   # 80 elements / 8 devices
    keys = sorted(k for k in p0 if k.startswith(f"{axes}/") and "/info/" not in k)
    assert len(keys) == 12, keys   # params, m and v of 4 leaves
    for k in keys:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
        np.testing.assert_allclose(p0[k], one[k], rtol=2e-6, atol=1e-7, err_msg=k)
    assert float(np.max(np.abs(p0[f"{axes}/m/c"]))) > 0   # the state moved


# ------------------------------------------------------------------ int8 state, model-parallel
@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_int8_state_of_model_parallel_params_is_split_across_processes(runs_root, axes):
    """Two (64, 512) params split by rows and by columns over 8 devices of 2 processes:
    each device holds 1/8 of each int8 slot's bytes (before, all of them), and the
    numbers are those of one process."""
    one = cached_run(runs_root, "split_1x8", _runs(runs_root))[0]
    p0, p1 = cached_run(runs_root, "split_2x4", _runs(runs_root))
    prefix = f"int8/{axes}/"
    for r, devices in ((one, 8), (p0, 4), (p1, 4)):
        for slot in ("m", "v"):
            for k in ("rows", "cols"):
                per, total = r[f"{prefix}info/{slot}/{k}/bytes"], int(r[f"{prefix}info/{slot}/{k}/total"])
                assert per.tolist() == [total // 8] * devices, (slot, k, per, total)
    keys = sorted(k for k in p0 if k.startswith(prefix) and "/info/" not in k)
    assert len(keys) == 6, keys   # 2 params, m and v of each
    for k in keys:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
        np.testing.assert_allclose(p0[k], one[k], rtol=2e-6, atol=1e-7, err_msg=k)
