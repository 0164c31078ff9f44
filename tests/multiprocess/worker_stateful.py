"""Worker: kopt's stateful facade on Variables sharded over a global mesh.

Run as 2 processes x 4 CPU devices and as 1 process x 8 devices on the same 4 x 2
("data", "model") mesh. Saved per process, for the test to compare:

- `weights/<i>`: `opt.get_weights()` after 3 steps (full host arrays, every process);
- `numpy/<name>`, `asarray/<name>`: `Variable.numpy()` and `np.asarray(variable)`;
- `restored/<i>`: `get_weights()` after `set_weights` of a snapshot taken after step 1,
  `set_kept_shardings`: whether the state kept every sharding through it, and
  `after_restore/<name>`: the variables after one more step;
- `mismatch_error`, `mismatch_unchanged`: `set_weights` given other values on process 1
  (several processes only);
- `pickle_opt`, `pickle_var`: "ok" (round trip checked) or the error pickling raised;
- `local_view_ok`, `local_parts`: `multihost.local_view` of the split kernel;
- `bf16/...`: `get_weights()` of an Adam with bfloat16 state after 3 steps, their
  dtypes, and whether `set_weights` of them gives them back (`bf16/round_trip`).
"""

from __future__ import annotations

import pickle

from tests.multiprocess import worker

worker.start()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kopt  # noqa: E402
from kopt.stateful import multihost  # noqa: E402

SPECS = {"kernel": ((16, 8), P("data", "model")), "bias": ((8,), P("model")),
         "gain": ((5,), P())}


def main():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    host = {k: rng.normal(size=s).astype(np.float32) for k, (s, _) in SPECS.items()}
    like = {k: jax.ShapeDtypeStruct(s, np.float32, sharding=NamedSharding(mesh, spec))
            for k, (s, spec) in SPECS.items()}
    variables = [kopt.Variable(multihost.from_host(host[k], like[k]), name=k) for k in SPECS]
    opt = kopt.optimizers.Adam(learning_rate=0.01)

    def step(t):
        grads = [multihost.from_host(np.cos(host[v.name] * (t + 1)).astype(np.float32),
                                     like[v.name]) for v in variables]
        opt.apply_gradients(zip(grads, variables))

    results = {}
    step(0)
    snapshot = opt.get_weights()
    step(1)
    step(2)
    results["iterations"] = np.asarray(int(opt.iterations))
    results["learning_rate"] = opt.learning_rate
    for i, w in enumerate(opt.get_weights()):
        results[f"weights/{i}"] = w
    for v in variables:
        results[f"numpy/{v.name}"] = v.numpy()
        results[f"asarray/{v.name}"] = np.asarray(v)

    shardings = [x.sharding for x in jax.tree.leaves(opt.state)]
    before = opt.get_weights()
    if jax.process_count() > 1:   # other values on process 1: refused, nothing changed
        bad = [w + (jax.process_index() if i == 1 else 0) for i, w in enumerate(before)]
        try:
            opt.set_weights(bad)
            results["mismatch_error"] = np.asarray("no error")
        except ValueError as e:
            results["mismatch_error"] = np.asarray(str(e))
        after = opt.get_weights()
        results["mismatch_unchanged"] = np.asarray(all(
            np.array_equal(a, b) for a, b in zip(before, after)))
    opt.set_weights(snapshot)
    for i, w in enumerate(opt.get_weights()):
        results[f"restored/{i}"] = w
    results["set_kept_shardings"] = np.asarray(all(
        a == b for a, b in zip(shardings, [x.sharding for x in jax.tree.leaves(opt.state)])))
    step(3)
    for v in variables:
        results[f"after_restore/{v.name}"] = v.numpy()

    for key, obj, check in [
        ("pickle_opt", opt, lambda o: all(np.array_equal(a, b) for a, b in
                                          zip(o.get_weights(), opt.get_weights()))),
        ("pickle_var", variables[0], lambda v: np.array_equal(v.numpy(), variables[0].numpy())),
    ]:
        try:
            restored = pickle.loads(pickle.dumps(obj))
        except TypeError as e:
            results[key] = np.asarray(f"TypeError: {e}")
        else:
            results[key] = np.asarray("ok" if check(restored) else "round trip differs")

    # bfloat16 state: get_weights gathers bfloat16 slots and the rounding seed;
    # set_weights takes them back unchanged.
    low = [kopt.Variable(multihost.from_host(host[k], like[k]), name=k) for k in SPECS]
    opt16 = kopt.optimizers.Adam(learning_rate=0.01, state_dtype="bfloat16")
    for t in range(3):
        grads = [multihost.from_host(np.cos(host[v.name] * (t + 1)).astype(np.float32),
                                     like[v.name]) for v in low]
        opt16.apply_gradients(zip(grads, low))
    weights16 = opt16.get_weights()
    for i, w in enumerate(weights16):
        results[f"bf16/weights/{i}"] = w
    results["bf16/dtypes"] = np.asarray(",".join(str(w.dtype) for w in weights16))
    opt16.set_weights(weights16)
    results["bf16/round_trip"] = np.asarray(all(
        np.array_equal(a, b) for a, b in zip(opt16.get_weights(), weights16)))

    kernel = variables[0].value
    full = variables[0].numpy()
    parts = multihost.local_view(kernel)
    results["local_parts"] = np.asarray(len(parts))
    results["local_view_ok"] = np.asarray(all(np.array_equal(p.data, full[p.index])
                                              for p in parts))
    worker.save(results)


if __name__ == "__main__":
    main()
