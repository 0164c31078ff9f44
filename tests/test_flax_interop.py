"""flax.nnx (issue 6, section 3): three ways to train an `nnx.Module` with kopt.

1. the stateful facade on `kopt.interop.flax.variables(model)`, gradients from `nnx.grad`;
2. `nnx.Optimizer` with `kopt.interop.flax.transform(tx)` inside `nnx.jit`;
3. `nnx.split`/`nnx.merge` with `kopt.functional` inside `jax.jit`.

All three take the same steps, bit for bit, and reduce the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional as kf

nnx = pytest.importorskip("flax.nnx")

import kopt.interop.flax as kopt_flax  # noqa: E402

STEPS = 3


def numpy_init(key, shape, dtype=jnp.float32):
    """LeCun-normal-like values from NumPy (jax.random would compile several kernels)."""
    del key
    values = np.random.default_rng(shape[-1]).standard_normal(shape) / np.sqrt(shape[0])
    return jnp.asarray(values, dtype)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, kernel_init=numpy_init, rngs=rngs)
        self.out = nnx.Linear(8, 1, kernel_init=numpy_init, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@pytest.fixture(autouse=True)
def allow_broadcasting():
    # nnx.Linear adds a (features,) bias to a (batch, features) product.
    with jax.numpy_rank_promotion("allow"):
        yield


def data():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((16, 4)), jnp.float32),
            jnp.asarray(rng.standard_normal((16, 1)), jnp.float32))


def params_of(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def train_stateful(x, y):
    model = MLP(nnx.Rngs(0))
    params = kopt_flax.variables(model)
    opt = kopt.optimizers.Adam(0.05, weight_decay=0.01)
    opt.exclude_from_weight_decay(var_names=["bias"])
    grad_fn = nnx.jit(nnx.grad(loss_fn))
    for _ in range(STEPS):
        grads = grad_fn(model, x, y)
        opt.apply_gradients(zip(jax.tree.leaves(grads), params))
    assert int(opt.iterations) == STEPS
    return model


def train_nnx_optimizer(x, y):
    model = MLP(nnx.Rngs(0))
    mask = nnx.map_state(lambda path, _: path[-1] != "bias", nnx.state(model, nnx.Param))
    tx = kf.adam(0.05, weight_decay=0.01, weight_decay_mask=nnx.as_pure(mask))
    optimizer = nnx.Optimizer(model, kopt_flax.transform(tx), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(STEPS)]
    assert losses[-1] < losses[0]
    assert int(kf.iteration_count(nnx.as_pure(optimizer.opt_state))) == STEPS
    return model


def train_split_merge(x, y):
    model = MLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: path[-2].key != "bias", params)   # path ends in (..., 'bias', .value)
    tx = kf.adam(0.05, weight_decay=0.01, weight_decay_mask=mask)
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, rest, x, y):
        grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), x, y))(params)
        updates, state = tx.update(grads, state, params)
        return kf.apply_updates(params, updates), state

    for _ in range(STEPS):
        params, state = train_step(params, state, rest, x, y)
    nnx.update(model, params)
    return model


def test_three_ways_to_train_an_nnx_module_agree():
    x, y = data()
    initial = params_of(MLP(nnx.Rngs(0)))
    stateful = params_of(train_stateful(x, y))
    in_jit = params_of(train_nnx_optimizer(x, y))
    split = params_of(train_split_merge(x, y))
    for a, b, c, start in zip(stateful, in_jit, split, initial):
        assert not np.array_equal(a, start)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_variables_follow_state_order_and_write_through():
    model = MLP(nnx.Rngs(0))
    params = kopt_flax.variables(model)
    assert [p.name for p in params] == ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
    assert [p.shape for p in params] == [x.shape for x in params_of(model)]
    params[1].assign(jnp.zeros((4, 8), jnp.float32))
    np.testing.assert_array_equal(model.hidden.kernel.get_value(), np.zeros((4, 8), np.float32))
    with pytest.raises(TypeError, match="init/update"):
        kopt_flax.transform(0.1)


def test_nnx_detection_helpers_name_the_right_route():
    """issue 13, item 18: an nnx State given as gradients, or a bare transform whose state
    was made from nnx Variables, gets a hint naming the route that works."""
    model = MLP(nnx.Rngs(0))
    grads = nnx.grad(loss_fn)(model, *data())
    assert kopt_flax.is_nnx_state(grads)
    assert not kopt_flax.is_nnx_state(jax.tree.leaves(grads))
    assert not kopt_flax.is_nnx_state({"kernel": jnp.ones(2)})
    assert "jax.tree.leaves(grads)" in kopt_flax.nnx_gradient_hint(grads)
    # zip(grads, params) pairs the State's keys with the params.
    assert "jax.tree.leaves(grads)" in kopt_flax.nnx_gradient_hint(list(grads))
    assert kopt_flax.nnx_gradient_hint(jax.tree.leaves(grads)) == ""

    # nnx.Optimizer hands tx.init the model's State (nnx.Param nodes), tx.update arrays.
    with_vars = jax.tree.structure(nnx.state(model, nnx.Param))
    pure = jax.tree.structure(nnx.as_pure(nnx.state(model, nnx.Param)))
    hint = kopt_flax.tree_mismatch_hint(with_vars, pure)
    assert "kopt.interop.flax.transform(tx)" in hint and "nnx.Param" in hint
    assert kopt_flax.tree_mismatch_hint(pure, pure) == ""
    assert kopt_flax.tree_mismatch_hint(with_vars, with_vars) == ""
    assert kopt_flax.tree_mismatch_hint("not a treedef") == ""


def test_detection_helpers_never_import_flax():
    """The base optimizer may call `is_nnx_state` on every step: importing the module
    and calling it must not import flax (nor need it installed)."""
    import subprocess
    import sys
    code = ("import sys, kopt.interop.flax as f; "
            "r = (f.is_nnx_state({}), f.nnx_gradient_hint(['a']), f.tree_mismatch_hint(None)); "
            "print(r, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "(False, '', '') False"


def test_transform_tree_mismatch_error_carries_the_nnx_hint():
    """A transform initialised on the model's nnx.State (nnx.Param nodes) and then given
    plain-array gradients names the route that works (#16 item 5); a mismatch with no nnx
    Variables in it gets no hint."""
    model = MLP(nnx.Rngs(0))
    tx = kf.adam(1e-3)
    params = nnx.state(model, nnx.Param)
    state = tx.init(params)
    pure = nnx.as_pure(params)
    with pytest.raises(ValueError, match="does not match") as info:
        tx.update(pure, state, params)
    assert "kopt.interop.flax.transform(tx)" in str(info.value)
    plain = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="does not match") as info:
        tx.update({"v": jnp.ones(2)}, tx.init(plain), plain)
    assert "nnx" not in str(info.value)
