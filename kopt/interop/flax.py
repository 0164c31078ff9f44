"""flax.nnx: train an `nnx.Module` with kopt, statefully or inside `nnx.jit`.

Stateful, with the Keras-style facade (eager, one compiled step per call)::

    from flax import nnx
    import kopt, kopt.interop.flax

    opt = kopt.optimizers.Adam(1e-3)
    params = kopt.interop.flax.variables(model)            # nnx.Param, in state order
    grads = nnx.grad(loss_fn)(model, x, y)                 # an nnx.State like the params
    opt.apply_gradients(zip(jax.tree.leaves(grads), params))   # updates the model in place

Inside `nnx.jit`, with `nnx.Optimizer` and a kopt transform::

    optimizer = nnx.Optimizer(model, kopt.interop.flax.transform(kopt.functional.adam(1e-3)),
                              wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

Or in plain `jax.jit`, with `nnx.split`/`nnx.merge` and `kopt.functional` directly (no
helper needed): split the model into `graphdef, params, rest`, differentiate
`loss(nnx.merge(graphdef, params, rest))` with respect to `params`, and run
`tx.update`/`kopt.functional.apply_updates` on `params`.

This module imports flax; `kopt` itself never does.
"""

from __future__ import annotations

import jax
from flax import nnx

from kopt.functional.base import Transform

__all__ = ["NnxVariable", "variables", "transform"]


class NnxVariable:
    """An `nnx.Variable` seen through the interface the stateful facade updates.

    `value` reads the variable (`get_value()`) and `assign(x)` writes it (`set_value`), so
    `opt.apply_gradients` changes the module in place.
    """

    __slots__ = ("variable", "name")

    def __init__(self, variable: nnx.Variable, name: str):
        self.variable = variable
        self.name = name

    @property
    def value(self) -> jax.Array:
        return self.variable.get_value()

    def assign(self, value) -> None:
        self.variable.set_value(value)

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self):
        return f"<kopt.interop.flax.NnxVariable {self.name!r} shape={self.shape} dtype={self.dtype}>"


def variables(model: nnx.Module, wrt=nnx.Param) -> list[NnxVariable]:
    """The variables of `model` selected by the filter `wrt`, for the stateful facade.

    They come in the leaf order of `nnx.state(model, wrt)`, which is also the leaf order of
    the gradients `nnx.grad` returns for the same filter, so
    `zip(jax.tree.leaves(grads), variables(model))` pairs them. Names are the state paths
    (`"linear/kernel"`), usable with `exclude_from_weight_decay(var_names=...)`.
    """
    state = nnx.state(model, wrt)
    found = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    out = []
    for path, var in found:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out.append(NnxVariable(var, name))
    return out


def transform(tx) -> Transform:
    """`tx` (a kopt transform) made ready for `nnx.Optimizer`.

    `nnx.Optimizer` calls `tx.init` on the state of the model, whose leaves are
    `nnx.Variable`s, and `tx.update` on plain arrays. kopt's state records the tree
    structure of the params at `init`, so `init` must see the plain arrays too: this
    wrapper passes it `nnx.as_pure(params)`. `update` is `tx.update` unchanged.
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"transform expects a transform with init/update. Received: {tx!r}")

    def init_fn(params):
        return tx.init(nnx.as_pure(params))

    return Transform(init_fn, tx.update)
