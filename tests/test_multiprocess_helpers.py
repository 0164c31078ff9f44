"""`kopt.stateful.multihost` in one process (8 CPU devices); the same helpers across
processes are tested by `tests/test_multiprocess.py`."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kopt
from kopt.stateful import multihost

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py)")


@pytest.fixture
def mesh():
    return jax.make_mesh((4, 2), ("data", "model"))


def test_from_host_builds_onto_the_sharding_and_to_host_reads_back(mesh):
    host = np.arange(128, dtype=np.float64).reshape(16, 8)
    like = jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P("data", "model")))
    x = multihost.from_host(host, like)
    assert x.dtype == jnp.float32 and x.sharding == like.sharding
    tree = multihost.to_host({"x": x, "n": 3, "h": host})
    np.testing.assert_array_equal(tree["x"], host.astype(np.float32))
    assert isinstance(tree["x"], np.ndarray) and tree["n"] == np.asarray(3)


def test_from_host_names_a_wrong_shape(mesh):
    like = jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P()))
    with pytest.raises(ValueError, match=r"shape \(8, 16\), expected \(16, 8\)"):
        multihost.from_host(np.zeros((8, 16)), like)
    with pytest.raises(ValueError, match=r"set_weights: leaf 1 has shape \(3,\)"):
        multihost.from_host_tree([np.zeros((16, 8)), np.zeros(3)], [like, like], "set_weights")


def test_from_host_tree_places_like_the_targets(mesh):
    likes = [jax.device_put(jnp.zeros((16, 8)), NamedSharding(mesh, P(None, "model"))),
             jnp.zeros((), jnp.int32)]
    out = multihost.from_host_tree([np.ones((16, 8)), np.asarray(7)], likes)
    assert out[0].sharding == likes[0].sharding and out[1].sharding == likes[1].sharding
    assert out[1].dtype == jnp.int32 and int(out[1]) == 7


def test_local_view_lists_each_distinct_part_once(mesh):
    host = np.arange(128, dtype=np.float32).reshape(16, 8)
    split = jax.device_put(host, NamedSharding(mesh, P("data", "model")))
    parts = multihost.local_view(split)
    assert len(parts) == 8 and all(p.data.shape == (4, 4) for p in parts)
    for p in parts:
        np.testing.assert_array_equal(p.data, host[p.index])
    (whole,) = multihost.local_view(jax.device_put(host, NamedSharding(mesh, P())))
    np.testing.assert_array_equal(whole.data, host)


def test_one_process_pickles_and_reads_as_before(mesh):
    w = kopt.Variable(jax.device_put(np.ones((16, 8), np.float32),
                                     NamedSharding(mesh, P("data", "model"))), name="w")
    multihost.check_picklable(w.value, "w")   # one process holds everything
    w2 = pickle.loads(pickle.dumps(w))
    assert w2.name == "w" and w2.trainable
    np.testing.assert_array_equal(w2.numpy(), np.ones((16, 8), np.float32))
    np.testing.assert_array_equal(np.asarray(w, np.float64), np.ones((16, 8)))
