"""Errors that point to the right route (issue #13, item 18, the stateful part)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.interop.flax

nnx = pytest.importorskip("flax.nnx")


def test_nnx_state_as_gradients_suggests_tree_leaves():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    variables = kopt.interop.flax.variables(model)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)))))(model)
    opt = kopt.optimizers.SGD(0.1)
    with pytest.raises(TypeError, match=r"jax\.tree\.leaves\(grads\)"):
        opt.apply(grads, variables)
    assert not opt.built
    opt.apply(jax.tree.leaves(grads), variables)   # the suggested route works
    assert int(opt.iterations) == 1
    np.testing.assert_allclose(np.asarray(model.bias[...]), -0.1 * np.ones(2), rtol=1e-6)
