"""Per-subtree optimizers: `kopt.functional.partition` and `kopt.optimizers.MultiOptimizer`.

- the partition of several transforms equals each transform run on its own subtree (the
  same float32 numbers, exactly), with a different learning rate per subtree, weight decay
  that reads `params`, bucketed (`Packed`) state and `None` gradients;
- a frozen subtree keeps its params and has no state leaves;
- labels as a pytree, a prefix pytree, a callable and `path_labels` regexes;
- optax transforms inside a partition, and kopt's partition against optax.multi_transform;
- the step count, the learning-rate queries and changing one subtree's rate under jit;
- `MultiOptimizer` against separate stateful optimizers (exactly), its three ways of
  assigning variables, `get_weights`/`set_weights`, config and pickling, and its errors.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kopt
import kopt.functional as kf
from kopt.functional.partition import MaskedNode, frozen, multi_transform, partition, path_labels
from kopt.stateful.multi_optimizer import MultiOptimizer, OptimizerMap
from tests.helpers import assert_trees_equal, jit_max_traces

NUM_STEPS = 4


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
    return {
        "encoder": {"layers": [{"kernel": f(3, 4), "bias": f(4)}, {"kernel": f(4, 2), "bias": f(2)}]},
        "head": {"kernel": f(2, 3), "scale": f()},
        "embed": f(5, 3),
    }


def make_grads(params, seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(p.dtype)), params)
            for _ in range(NUM_STEPS)]


PARAMS = make_params()
GRADS = make_grads(PARAMS)


def run(tx, params, grads_seq):
    """`NUM_STEPS` jitted updates; returns the final params and state."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = kf.apply_updates(params, updates)
    return params, state


def num_state_elements(state):
    return sum(int(np.size(x)) for x in jax.tree.leaves(state))


# --------------------------------------------------------------------------------------
# Functional partition against each transform on its own subtree.

def subtree_transforms():
    return {
        # weight decay needs params; a bucket threshold packs the small leaves together
        "encoder": kf.adamw(0.01, weight_decay=0.1, bucket_threshold=16),
        "head": kf.sgd(0.1, momentum=0.9),
        "embed": kf.rmsprop(0.003),
    }


def test_partition_equals_each_transform_on_its_subtree():
    labels = {"encoder": "encoder", "head": "head", "embed": "embed"}   # a prefix of params
    got, state = run(partition(subtree_transforms(), labels), PARAMS, GRADS)
    for name, tx in subtree_transforms().items():
        want, alone = run(tx, PARAMS[name], [g[name] for g in GRADS])
        assert_trees_equal(got[name], want)
        # Same state arrays as the transform alone: only the subtree's leaves have state.
        assert [np.asarray(x).tolist() for x in jax.tree.leaves(state.inner[name])] == [
            np.asarray(x).tolist() for x in jax.tree.leaves(alone)]
    assert int(kf.iteration_count(state)) == NUM_STEPS
    assert list(state.inner) == ["embed", "encoder", "head"]
    bucketed = state.inner["encoder"].m
    # The encoder's four leaves (12 + 4 + 8 + 2 values) share one bucket; no other leaf does.
    assert [b.shape for b in bucketed.buckets] == [(26,)]
    assert [x for x in bucketed.leaves if x is not None] == []


def test_update_needs_params_when_an_inner_transform_does():
    tx = partition({"decay": kf.adamw(0.01, weight_decay=0.1), "plain": kf.sgd(0.1)},
                   {"encoder": "decay", "head": "plain", "embed": "plain"})
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(GRADS[0], tx.init(PARAMS))


def test_none_gradients_pass_through_and_keep_state():
    tx = partition({"a": kf.adam(0.01), "b": kf.sgd(0.1)},
                   {"encoder": "a", "head": "a", "embed": "b"})
    state = tx.init(PARAMS)
    grads = {**GRADS[0], "head": {"kernel": None, "scale": GRADS[0]["head"]["scale"]}}
    updates, new = jax.jit(tx.update)(grads, state, PARAMS)
    assert updates["head"]["kernel"] is None
    assert updates["head"]["scale"].shape == ()
    m_old, m_new = state.inner["a"].m.to_tree(), new.inner["a"].m.to_tree()
    np.testing.assert_array_equal(m_new["head"]["kernel"], m_old["head"]["kernel"])
    assert isinstance(m_new["embed"], MaskedNode)


def test_frozen_subtrees_are_unchanged_and_have_no_state():
    # Four spellings of "frozen": None, "frozen", frozen() and optax.set_to_zero().
    labels = {"encoder": {"layers": ["f1", "f2"]}, "head": {"kernel": "train", "scale": "f3"},
              "embed": "f4"}
    tx = partition({"train": kf.adam(0.01), "f1": None, "f2": "frozen", "f3": frozen(),
                    "f4": optax.set_to_zero()}, labels)
    got, state = run(tx, PARAMS, GRADS[:2])
    assert_trees_equal(got["encoder"], PARAMS["encoder"])
    assert_trees_equal(got["embed"], PARAMS["embed"])
    assert_trees_equal(got["head"]["scale"], PARAMS["head"]["scale"])
    assert not np.array_equal(got["head"]["kernel"], PARAMS["head"]["kernel"])
    for label in ("f1", "f2", "f3", "f4"):
        assert jax.tree.leaves(state.inner[label]) == []
    # Adam's state covers only head/kernel: count, learning rate, and m and v of 6 values.
    assert num_state_elements(state.inner["train"]) == 2 + 2 * 6


def test_frozen_alone():
    tx = frozen()
    updates, state = tx.update({"w": jnp.ones(2), "b": None}, tx.init({"w": jnp.ones(2)}))
    assert updates["b"] is None and updates["w"].tolist() == [0.0, 0.0]
    assert jax.tree.leaves(state) == []


# --------------------------------------------------------------------------------------
# Labels.

def test_label_forms_agree():
    transforms = {"slow": kf.adam(1e-3), "fast": kf.adam(1e-1)}
    full = {"encoder": {"layers": [{"kernel": "slow", "bias": "fast"}] * 2},
            "head": {"kernel": "slow", "scale": "fast"}, "embed": "slow"}
    rules = path_labels([(r"bias$|scale$", "fast")], default="slow")
    fn = lambda params: jax.tree.map(lambda _: "slow", params) | {
        "encoder": {"layers": [{"kernel": "slow", "bias": "fast"}] * 2},
        "head": {"kernel": "slow", "scale": "fast"}}
    # Where each label's state is masked shows the labels each form gives.
    structures = [jax.tree.structure(partition(transforms, labels).init(PARAMS))
                  for labels in (full, rules, fn)]
    assert structures[1] == structures[0] and structures[2] == structures[0]
    got, _ = run(partition(transforms, rules), PARAMS, GRADS[:2])
    # The two rates differ: the biases moved ~100x more than the kernels (Adam: ~lr).
    moved = lambda k: float(jnp.max(jnp.abs(got["encoder"]["layers"][0][k]
                                            - PARAMS["encoder"]["layers"][0][k])))
    assert moved("bias") > 50 * moved("kernel")


def test_path_labels_paths_order_and_default():
    fn = path_labels([("^encoder/layers/1/", "second"), ("kernel$", "kernel"),
                      ("^encoder/", "encoder")], default="rest")
    assert fn(PARAMS) == {
        "encoder": {"layers": [{"bias": "encoder", "kernel": "kernel"},
                               {"bias": "second", "kernel": "second"}]},
        "head": {"kernel": "kernel", "scale": "rest"},
        "embed": "rest",
    }
    with pytest.raises(ValueError, match="'head/scale' matches none"):
        path_labels([("kernel", "k"), ("bias", "b"), ("embed", "e")])(PARAMS)
    with pytest.raises(ValueError, match=r"rule 0 has an invalid regex.*'\('"):
        path_labels([("(", "a")])
    with pytest.raises(TypeError, match="rule 1 must be a \\(regex, label\\) pair"):
        path_labels([("a", "a"), "b"])


# --------------------------------------------------------------------------------------
# optax.

def test_optax_inner_transforms_and_optax_multi_transform():
    labels = {"encoder": "a", "head": "b", "embed": "c"}
    inner = lambda: {"a": optax.adam(0.01), "b": kf.sgd(0.1, momentum=0.9),
                     "c": optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1))}
    with jax.numpy_dtype_promotion("standard"):   # optax's adam mixes float and int32
        got, state = run(multi_transform(inner(), labels), PARAMS, GRADS[:3])
        want, _ = run(optax.multi_transform(inner(), labels), PARAMS, GRADS[:3])
        # a partition inside optax.chain
        chained, _ = run(optax.chain(optax.scale(1.0), partition(inner(), labels)), PARAMS,
                         GRADS[:3])
    assert_trees_equal(got, want)
    assert_trees_equal(chained, got)
    mu = state.inner["a"][0].mu
    assert isinstance(mu["head"]["kernel"], MaskedNode) and mu["encoder"]["layers"][0]["kernel"].shape == (3, 4)


# --------------------------------------------------------------------------------------
# Step count and learning rates.

def test_count_and_learning_rates_under_jit():
    schedule = kopt.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    tx = partition({"a": kf.adam(0.02), "b": kf.sgd(schedule), "c": None},
                   {"encoder": "a", "head": "b", "embed": "c"})
    state = tx.init(PARAMS)
    @jit_max_traces   # a changed subtree rate must not retrace
    def update(grads, state, params):
        return tx.update(grads, state, params)

    for grads in GRADS[:2]:
        _, state = update(grads, state, PARAMS)
    assert int(kf.iteration_count(state)) == 2
    # The first label (sorted) with a learning rate: "a".
    np.testing.assert_allclose(kf.current_learning_rate(state), 0.02)
    np.testing.assert_allclose(kf.current_learning_rate(state.inner["b"]), 0.1 * 0.5**2)
    # One subtree's rate changes without a recompile: Adam's update scales with it.
    faster = state._replace(inner={**state.inner, "a": kf.set_learning_rate(state.inner["a"], 0.5)})
    base, _ = update(GRADS[2], state, PARAMS)
    fast, _ = update(GRADS[2], faster, PARAMS)
    for x, y in zip(jax.tree.leaves(fast["encoder"]), jax.tree.leaves(base["encoder"])):
        np.testing.assert_allclose(x, 25 * y, rtol=1e-5)
    assert_trees_equal(fast["head"], base["head"])


# --------------------------------------------------------------------------------------
# Errors.

def test_partition_errors():
    with pytest.raises(TypeError, match="non-empty dict"):
        partition([kf.sgd(0.1)], {"a": "a"})
    with pytest.raises(TypeError, match=r"transforms\['b'\] must be a transform"):
        partition({"a": kf.sgd(0.1), "b": "adam"}, {"a": "a"})
    tx = partition({"a": kf.sgd(0.1)}, {"encoder": "a", "head": "a", "embed": "x"})
    with pytest.raises(ValueError, match="path 'embed' has the label 'x', which is not a key"):
        tx.init(PARAMS)
    tx = partition({"a": kf.sgd(0.1)}, {"encoder": "a", "head": "a"})
    with pytest.raises(ValueError, match="labels must have the structure of params"):
        tx.init(PARAMS)
    tx = partition({"a": kf.sgd(0.1)}, lambda p: jax.tree.map(lambda _: "a", p))
    with pytest.raises(ValueError, match="make sure you called init"):
        tx.update(GRADS[0], kf.sgd(0.1).init(PARAMS), PARAMS)
    with pytest.raises(ValueError, match="gradient tree does not match"):
        tx.update({"encoder": GRADS[0]["encoder"]}, tx.init(PARAMS), PARAMS)


# --------------------------------------------------------------------------------------
# Stateful MultiOptimizer.

def make_variables():
    flat, _ = jax.tree_util.tree_flatten_with_path(PARAMS)
    return [kopt.Variable(x, name=jax.tree_util.keystr(p, simple=True, separator="/"))
            for p, x in flat]


def grads_for(variables, step):
    names = {v.name: i for i, v in enumerate(variables)}
    flat, _ = jax.tree_util.tree_flatten_with_path(GRADS[step])
    g = [None] * len(variables)
    for p, x in flat:
        g[names[jax.tree_util.keystr(p, simple=True, separator="/")]] = x
    return g


def make_inner():
    adamw = kopt.optimizers.AdamW(0.01, weight_decay=0.1)
    adamw.exclude_from_weight_decay(var_names=["bias"])
    return adamw, kopt.optimizers.SGD(0.1, momentum=0.9), kopt.optimizers.RMSprop(0.003)


def is_encoder(v):
    return v.name.startswith("encoder/")


def test_multi_optimizer_equals_separate_optimizers():
    # Separate optimizers, each on its own variables.
    ref_vars = make_variables()
    a, s, r = make_inner()
    groups = [(a, [v for v in ref_vars if is_encoder(v)]),
              (s, [v for v in ref_vars if v.name.startswith("head/")]),
              (r, [v for v in ref_vars if v.name == "embed"])]
    for step in range(NUM_STEPS):
        g = dict(zip(map(id, ref_vars), grads_for(ref_vars, step)))
        for opt, vs in groups:
            opt.apply_gradients([(g[id(v)], v) for v in vs])

    variables = make_variables()
    a2, s2, r2 = make_inner()
    multi = MultiOptimizer(OptimizerMap(r2, {"encoder/.*": a2, "head/.*": s2}))
    for step in range(NUM_STEPS):
        multi.apply_gradients(zip(grads_for(variables, step), variables))
    for v, w in zip(variables, ref_vars):
        np.testing.assert_array_equal(v.numpy(), w.numpy())
    assert multi.optimizers == [a2, s2, r2]
    assert int(multi.iterations) == NUM_STEPS
    assert [int(o.iterations) for o in multi.optimizers] == [NUM_STEPS] * 3
    for mine, theirs in zip(multi.optimizers, (a, s, r)):
        for x, y in zip(mine.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(x, y)
    weights = multi.get_weights()
    assert len(weights) == 1 + 2 * 4 + 2 + 1   # iterations, AdamW m and v, SGD momentum, rms
    expected = [weights[0]] + a2.get_weights()[1:] + s2.get_weights()[1:] + r2.get_weights()[1:]
    for x, y in zip(weights, expected):
        np.testing.assert_array_equal(x, y)
    assert multi._step._cache_size() == 1


def test_inner_learning_rate_is_live_and_does_not_recompile():
    variables = make_variables()
    adam, sgd = kopt.optimizers.Adam(0.01), kopt.optimizers.SGD(0.1)
    multi = MultiOptimizer(lambda v: adam if is_encoder(v) else sgd)
    multi.apply_gradients(zip(grads_for(variables, 0), variables))
    sgd.learning_rate = 0.0
    before = [v.numpy() for v in variables]
    multi.apply_gradients(zip(grads_for(variables, 1), variables))
    assert multi._step._cache_size() == 1
    for v, b in zip(variables, before):
        assert np.array_equal(v.numpy(), b) != is_encoder(v)
    np.testing.assert_allclose(sgd.learning_rate, 0.0)
    # A schedule on an inner optimizer remakes the joint step, which then follows it.
    sgd.learning_rate = kopt.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    head = next(v for v in variables if v.name == "head/scale")
    old = head.numpy()
    g = grads_for(variables, 2)
    multi.apply_gradients(zip(g, variables))
    np.testing.assert_allclose(head.numpy(), old - 0.25 * np.asarray(g[variables.index(head)]),
                               rtol=1e-6)
    with pytest.raises(AttributeError, match="no learning rate of its own"):
        multi.learning_rate   # noqa: B018
    with pytest.raises(AttributeError, match="multi.optimizers"):
        multi.learning_rate = 0.1


def test_assignment_forms_agree():
    variables = make_variables()
    enc = [v for v in variables if is_encoder(v)]
    rest = [v for v in variables if not is_encoder(v)]
    want = [0 if is_encoder(v) else 1 for v in variables]
    for form in ("map", "dict", "callable", "pairs"):
        adam, sgd = kopt.optimizers.Adam(0.01), kopt.optimizers.SGD(0.1)
        optimizer_map = {
            "map": OptimizerMap(sgd, {"encoder/.*": adam}),
            "dict": {"encoder/.*": adam, "head/.*|embed": sgd},
            "callable": lambda v, adam=adam, sgd=sgd: adam if is_encoder(v) else sgd,
            "pairs": [(adam, enc), (sgd, rest)],
        }[form]
        multi = MultiOptimizer(optimizer_map)
        multi.build(variables)
        # A callable meets the optimizers in variable order: "embed" (SGD) comes first.
        order = [sgd, adam] if form == "callable" else [adam, sgd]
        assert multi.optimizers == order
        assert [multi.optimizers[k] for k in multi._labels] == [[adam, sgd][k] for k in want]
        assert adam._vars == tuple(enc) and sgd._vars == tuple(rest)


def test_get_set_weights_round_trip_config_and_pickle():
    variables = make_variables()
    adam, sgd = kopt.optimizers.Adam(0.01), kopt.optimizers.SGD(0.1, momentum=0.9)
    multi = MultiOptimizer(OptimizerMap(sgd, {"encoder/.*": adam}), name="multi")
    for step in range(2):
        multi.apply_gradients(zip(grads_for(variables, step), variables))
    weights = multi.get_weights()
    assert weights[0].shape == () and int(weights[0]) == 2

    config = multi.get_config()
    assert config["name"] == "multi" and config["loss_scale_factor"] is None
    other = MultiOptimizer.from_config(config)
    twins = make_variables()
    other.build(twins)
    other.set_weights(weights)
    assert int(other.iterations) == 2
    assert [int(o.iterations) for o in other.optimizers] == [2, 2]
    for x, y in zip(other.get_weights(), weights):
        np.testing.assert_array_equal(x, y)
    for v, t in zip(variables, twins):
        t.assign(v.value)
    restored = pickle.loads(pickle.dumps(multi))
    g = grads_for(variables, 2)
    for opt, vs in ((multi, variables), (other, twins), (restored, restored._vars)):
        opt.apply_gradients(zip(g, vs))
    for v, t, u in zip(variables, twins, restored._vars):
        np.testing.assert_array_equal(v.numpy(), t.numpy())
        np.testing.assert_array_equal(v.numpy(), u.numpy())

    # Bad lists change nothing.
    before = other.get_weights()
    with pytest.raises(ValueError, match="expected a list of 12 arrays"):
        other.set_weights(weights[:-1])
    bad = list(weights)
    bad[-1] = np.zeros((7,), np.float32)   # the last SGD momentum
    with pytest.raises(ValueError, match=r"entries 9 to 11 are inner optimizer 'sgd'"):
        other.set_weights(bad)
    with pytest.raises(ValueError, match="entry 0 must be the iteration count"):
        other.set_weights([np.zeros(2)] + weights[1:])
    for x, y in zip(other.get_weights(), before):
        np.testing.assert_array_equal(x, y)


def test_multi_optimizer_errors():
    variables = make_variables()
    adam, sgd = kopt.optimizers.Adam(), kopt.optimizers.SGD()
    with pytest.raises(ValueError, match="'head/scale' is claimed by two optimizers"):
        MultiOptimizer([(adam, variables), (sgd, variables[-1])])
    multi = MultiOptimizer([(adam, variables[:-1])])
    with pytest.raises(ValueError, match="No optimizer is assigned to variable 'head/scale'"):
        multi.build(variables)
    assert not adam.built and not multi.built
    multi = MultiOptimizer(OptimizerMap(sgd, {"encoder/.*": adam, ".*/layers/.*": sgd}))
    with pytest.raises(ValueError, match="matches more than one key"):
        multi.build(variables)
    # As Keras: a nested MultiOptimizer is refused when the outer one is built.
    nested = MultiOptimizer(OptimizerMap(multi))
    with pytest.raises(ValueError, match="MultiOptimizer cannot be used inside an MultiOptimizer"):
        nested.build(variables)
    with pytest.raises(ValueError, match="must be a kopt optimizer"):
        OptimizerMap(sgd, {"x": "adam"})
    with pytest.raises(ValueError, match="already in the OptimizerMap"):
        OptimizerMap(sgd, {"x": adam})["x"] = sgd
    with pytest.raises(TypeError, match="optimizer_map must be"):
        MultiOptimizer(3)
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        MultiOptimizer(OptimizerMap(sgd), learning_rate=0.1)
    with pytest.raises(ValueError, match="a callable or a list of variables cannot"):
        MultiOptimizer(lambda v: sgd).get_config()
    # An inner optimizer already built with other variables.
    adam.build(variables[:1])
    with pytest.raises(ValueError, match="already built with other variables"):
        MultiOptimizer(OptimizerMap(sgd, {"encoder/.*": adam})).build(variables)
    assert not sgd.built
    # Gradients: a wrong shape names the variable and changes nothing.
    multi = MultiOptimizer(OptimizerMap(kopt.optimizers.SGD(0.1)))
    g = grads_for(variables, 0)
    g[0] = jnp.zeros((9,), jnp.float32)
    before = [v.numpy() for v in variables]
    with pytest.raises(ValueError, match=f"variable {variables[0].name!r} has shape"):
        multi.apply_gradients(zip(g, variables))
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(variables, before))
