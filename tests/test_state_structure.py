"""The state's pytree structure depends on the transform's options and the params' tree,
never on values, placement or how `init` ran (issue 13, item 13; issue 15).

- `optax.tree.map_params` works on every kopt state: every factory, bucketing off and
  on, bf16 and int8 state, `partition`; `fn` reaches each param's own state entry, and
  with extra params-shaped trees (partition specs) it builds a state-shaped tree of them;
- an eager `init`, a jitted one and `jax.eval_shape` of it (on arrays or on
  `ShapeDtypeStruct`s) give the same tree structure, also for a small split param on a
  mesh with Auto axes, where eager and traced `init` used to bucket differently;
- Muon's empty second moments (its Muon branch) are `Stub`s, not zero-size arrays.
"""

from __future__ import annotations

import base64
import inspect
import json
import pathlib
import pickle
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import kopt.functional as kf
from kopt.functional import states
from kopt.functional.buckets import Packed, Stub
from tests.catalogue import CATALOGUE
from tests.helpers import jit_max_traces

optax = pytest.importorskip("optax")

VARIANTS = {
    "defaults": {},
    "buckets_all": {"bucket_threshold": 4096},
    "buckets_some": {"bucket_threshold": 4, "use_ema": True, "gradient_accumulation_steps": 2},
    "bf16": {"state_dtype": "bfloat16", "bucket_threshold": 4096},
    "int8": {"state_dtype": "int8", "min_quantized_size": 8, "bucket_threshold": 4},
}

PARAMS = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
          "b": np.array([0.1, -0.2, 0.3, 0.0], np.float32),
          "s": np.array(0.5, np.float32)}


def _cases():
    for entry in CATALOGUE:   # every optimizer, with every optional slot
        takes_state_dtype = "state_dtype" in inspect.signature(entry.factory).parameters
        for variant, kwargs in VARIANTS.items():
            if "state_dtype" in kwargs and not takes_state_dtype:
                continue
            try:
                tx = entry.make_every_slot(**kwargs)
            except ValueError:   # int8 state on a rule that works on whole tensors
                assert variant == "int8"
                continue
            yield f"{entry.name}-{variant}", tx
    labels = {"w": "matrix", "b": "rest", "s": "rest"}
    inner = {"matrix": kf.muon(0.05), "rest": kf.adam(0.05, bucket_threshold=4096)}
    yield "partition-pytree-labels", kf.partition(inner, labels)
    yield "partition-path-labels", kf.partition(
        inner, kf.path_labels([("^w$", "matrix")], default="rest"))


CASES = dict(_cases())


def _params():
    return jax.tree.map(jnp.asarray, PARAMS)


def _packed_slots(state):
    return [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, Packed))
            if isinstance(x, Packed)]


def test_the_matrix_covers_every_kind_of_state():
    names = set(CASES)
    assert {"adam-int8", "adam-bf16", "muon-buckets_all", "adafactor-defaults"} <= names
    assert {f"{entry.name}-defaults" for entry in CATALOGUE} <= names   # every catalogue row
    kinds = set()
    for tx in CASES.values():
        for slot in _packed_slots(tx.init(_params())):
            kinds |= {type(e).__name__ for e in jax.tree.leaves(
                slot.tree, is_leaf=lambda x: isinstance(x, (Stub, kf.Quantized)))}
            kinds.add("bucket" if slot.bucket is not None else "no bucket")
    assert kinds == {"ArrayImpl", "Stub", "Quantized", "bucket", "no bucket"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_map_params_works_on_every_state(case):
    tx = CASES[case]
    params = _params()
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    _, state = jax.jit(tx.update)(grads, state, params)

    mapped = optax.tree.map_params(tx, lambda x: jnp.full_like(x, 7), state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    for before, after in zip(_packed_slots(state), _packed_slots(mapped)):
        # fn reached each param's own state entry; the bucket is not params-shaped and
        # goes to `transform_non_params` (here: kept).
        for x in jax.tree.leaves(after.tree):
            np.testing.assert_array_equal(np.asarray(x), 7)
        if before.bucket is not None:
            np.testing.assert_array_equal(np.asarray(after.bucket), np.asarray(before.bucket))
    np.testing.assert_array_equal(kf.iteration_count(mapped), kf.iteration_count(state))

    # The identity map gives a state the jitted step takes, without recompiling.
    same = optax.tree.map_params(tx, jnp.copy, state, transform_non_params=jnp.copy)
    step = jit_max_traces(tx.update)
    expected = step(grads, state, params)
    got = step(grads, same, params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("threshold", [0, 4096])
def test_map_params_with_specs_gives_a_state_shaped_tree_of_them(threshold):
    """optax's documented use: partition specs for the state from those of the params."""
    tx = kf.adamw(0.1, bucket_threshold=threshold)
    params = _params()
    state = tx.init(params)
    specs = {"w": P(None, "model"), "b": P(), "s": P()}
    if threshold:   # the bucketed entries are Stubs: let `fn` see them as leaves
        got = optax.tree.map_params(tx, lambda x, s: s, state, specs,
                                    transform_non_params=lambda _: P(),
                                    is_leaf=lambda x: isinstance(x, Stub))
    else:
        got = optax.tree.map_params(tx, lambda _, s: s, state, specs,
                                    transform_non_params=lambda _: P())
    assert got.m.tree == specs and got.v.tree == specs
    assert got.count == P() and got.learning_rate == P()
    assert (got.m.bucket is None) == (threshold == 0)
    # ... which place a jitted init's output.
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), got,
                             is_leaf=lambda x: isinstance(x, P))
    placed = jax.jit(tx.init, out_shardings=shardings)(params)
    assert jax.tree.structure(placed) == jax.tree.structure(state)
    if threshold:
        assert placed.m.bucket.sharding.is_fully_replicated
    else:
        assert placed.m.tree["w"].sharding.spec == P(None, "model")


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.endswith("defaults")))
def test_eager_jitted_and_abstract_init_have_one_structure(case):
    tx = CASES[case]
    params = _params()
    eager = jax.tree.structure(tx.init(params))
    assert jax.tree.structure(jax.eval_shape(tx.init, params)) == eager
    sds = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert jax.tree.structure(jax.eval_shape(tx.init, sds)) == eager


def test_jitted_init_has_the_eager_structure():
    params = _params()
    for case in ("adam-buckets_some", "adam-int8", "muon-defaults", "adafactor-bf16"
                 if "adafactor-bf16" in CASES else "adafactor-defaults"):
        tx = CASES[case]
        assert jax.tree.structure(jax.jit(tx.init)(params)) == jax.tree.structure(
            tx.init(params)), case


def test_eager_and_jitted_init_agree_for_split_params_on_an_auto_mesh():
    """Issue 15: an eager init saw the split leaf's sharding and kept it out of the
    bucket, a traced one did not, so their checkpoints did not fit each other."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    params = {"big": jax.device_put(jnp.ones((16, 8)), NamedSharding(mesh, P("data", "model"))),
              "bias": jax.device_put(jnp.ones((6,)), NamedSharding(mesh, P("model"))),
              "gain": jax.device_put(jnp.ones((5,)), NamedSharding(mesh, P()))}
    tx = kf.adam(0.1, bucket_threshold=64)
    eager = tx.init(params)
    traced = jax.jit(tx.init)(params)
    assert jax.tree.structure(eager) == jax.tree.structure(traced)
    assert eager.m.layout == traced.m.layout
    assert [k for k, _, _ in eager.m.layout.place] == [0, -1, 0]   # bias, gain bucketed; big own


def test_muon_empty_second_moments_are_stubs():
    tx = kf.muon(0.05)
    state = tx.init(_params())
    v = state.v
    assert isinstance(v.tree["w"], Stub) and not v.tree["w"].bucketed   # Muon branch
    assert v.leaf(sorted(PARAMS).index("w")).shape == (0,)   # read back as before
    assert all(x.size > 0 for x in jax.tree.leaves(state))   # orbax saves no empty array
    assert v.tree["b"].shape == (4,) and v.tree["s"].shape == ()   # AdamW branch


@pytest.mark.parametrize("case", ["adam-defaults", "adam-buckets_some", "adafactor-defaults",
                                  "muon-defaults", "lion-int8"])
def test_zero_size_params_give_no_zero_size_state_arrays(case):
    """orbax refuses to save empty arrays, so an empty param's state entries are Stubs;
    the step still gives it an empty update."""
    tx = CASES[case]
    params = {**_params(), "empty": jnp.zeros((0, 3), jnp.float32)}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert updates["empty"].shape == (0, 3)
    assert all(x.size > 0 for x in jax.tree.leaves(state)), case


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_every_slot_rows_give_the_state_every_optional_slot(entry):
    """`Entry.every_slot` turns on every optional slot, so the matrix above saves and maps
    them all: only the cross-cutting tail (`seed`, `ema`, `accum`, `micro_step`), off by
    default, may be None."""
    state = entry.make_every_slot().init(_params())
    empty = [f for f in state._fields if getattr(state, f) is None]
    assert set(empty) <= {"seed", "ema", "accum", "micro_step"}, (entry.name, empty)


# The State classes, as checkpoints and pickles know them (#16 item 3): their module,
# name, field order, defaults and class attributes, and a pickle of one made before the
# shared fields were declared once (`tests/data/state_classes.json`, written by
# `describe_state_classes` at commit a4cf08d, where each State spelled out every field).
STATE_CLASSES = pathlib.Path(__file__).parent / "data" / "state_classes.json"


def describe_state_classes() -> dict[str, dict]:
    """Every `*State` of `kopt.functional.__all__` from a per-optimizer module."""
    out = {}
    modules = {entry.factory.__module__ for entry in CATALOGUE}
    for name in kf.__all__:
        cls = getattr(kf, name)
        if not (name.endswith("State") and cls.__module__ in modules):
            continue
        example = cls(*range(len(cls._fields)))   # ints: a pickle independent of jax
        out[name] = {
            "module": cls.__module__, "qualname": cls.__qualname__,
            "fields": list(cls._fields), "defaults": dict(cls._field_defaults),
            "attributes": {k: v for k, v in vars(cls).items()
                           if not k.startswith("_") and k not in cls._fields},
            "pickle": base64.b64encode(pickle.dumps(example, protocol=2)).decode(),
        }
    return out


def test_state_classes_keep_their_fields_names_and_pickles():
    before = json.loads(STATE_CLASSES.read_text())
    now = describe_state_classes()
    assert sorted(now) == sorted(before)
    for name, old in before.items():
        cls = getattr(kf, name)
        for key in ("module", "qualname", "fields", "defaults", "attributes"):
            assert now[name][key] == old[key], (name, key)
        # A pickle made by the old class loads as the new one, field by field.
        loaded = pickle.loads(base64.b64decode(old["pickle"]))
        assert type(loaded) is cls and loaded == cls(*range(len(cls._fields))), name


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_every_state_has_the_shared_head_and_tail(entry):
    """`kopt.functional.states` declares `count`, `learning_rate` and the cross-cutting tail
    once; every optimizer's state has them around its own fields, `seed` exactly when its
    factory takes `state_dtype`."""
    fields = type(entry.make().init(_params()))._fields
    head = tuple(name for name, _ in states.HEAD)
    tail = tuple(name for name, _ in states.TAIL)
    takes_state_dtype = "state_dtype" in inspect.signature(entry.factory).parameters
    seed = ("seed",) if takes_state_dtype else ()
    assert fields[:len(head)] == head
    assert fields[len(fields) - len(seed + tail):] == seed + tail
    assert set(entry.slots) <= set(fields[len(head):len(fields) - len(seed + tail)])


def test_optimizer_state_refuses_shared_fields_and_non_namedtuples():
    class Bad(NamedTuple):
        m: int
        ema: int = 0

    with pytest.raises(TypeError, match=r"Bad declares the shared field\(s\) \['ema'\]"):
        states.optimizer_state(Bad)
    with pytest.raises(TypeError, match="Received: <class 'dict'>"):
        states.optimizer_state(dict)

    @states.optimizer_state(seed=False)
    class GoodState(NamedTuple):
        """A state with one slot."""
        m: int
        flag = True   # a class attribute, not a field

    assert GoodState._fields == ("count", "learning_rate", "m", "ema", "accum", "micro_step")
    assert GoodState.__doc__ == "A state with one slot." and GoodState.flag is True
    assert GoodState(0, 1, 2) == (0, 1, 2, None, None, None)
