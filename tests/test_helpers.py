"""The shared helpers of tests/helpers.py detect what they are meant to detect."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from tests.helpers import VARIANTS, assert_trees_close, assert_trees_equal, jit_max_traces


def test_jit_max_traces_raises_on_a_retrace():
    step = jit_max_traces(lambda x: 2 * x)
    step(jnp.ones(3))
    step(jnp.zeros(3))   # same shape and dtype: no new trace
    with pytest.raises(AssertionError, match="traced > 1 times"):
        step(jnp.ones(4))


@pytest.mark.parametrize("run", range(2))
def test_jit_max_traces_counts_each_test_run_afresh(run):
    """chex keys its counters by source: a parametrized test must not see the last run's."""
    step = jit_max_traces(lambda x: x + 1)
    assert float(step(jnp.float32(run))[()]) == run + 1


def test_jit_max_traces_counts_each_function_of_one_factory_apart():
    def make(scale):
        def step(x):
            return scale * x
        return jit_max_traces(step)

    first, second = make(2.0), make(3.0)
    first(jnp.ones(3))
    second(jnp.ones(3))   # its own first trace, not the factory's second
    first(jnp.ones(3))
    with pytest.raises(AssertionError, match="traced > 1 times"):
        first(jnp.ones(5))


def test_tree_comparisons_check_structure_and_values():
    a = {"w": jnp.ones(3, jnp.bfloat16), "n": None}
    assert_trees_close(a, {"w": jnp.ones(3, jnp.float32), "n": None})
    with pytest.raises(AssertionError):
        assert_trees_close(a, {"w": jnp.full(3, 1.5, jnp.float32), "n": None})
    with pytest.raises(AssertionError):
        assert_trees_close(a, {"w": jnp.ones(3, jnp.float32)})
    assert_trees_equal({"w": jnp.ones(2)}, {"w": jnp.ones(2)})
    with pytest.raises(AssertionError):
        assert_trees_equal({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.bfloat16)}, dtypes=True)
    with pytest.raises(AssertionError):
        assert_trees_equal({"w": jnp.ones(2)}, {"w": jnp.zeros(2)})


@VARIANTS
def test_variants_give_the_same_result(variant):
    assert float(variant(lambda x: jnp.sum(x * x))(jnp.arange(3.0))) == 5.0
