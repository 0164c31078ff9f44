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

This module imports flax when one of its helpers is first used, not on import: the
detection helpers (`is_nnx_state`, `nnx_gradient_hint`, `tree_mismatch_hint`) never import
it, so kopt can call them on every step. `kopt` itself never imports flax.
"""

from __future__ import annotations

import sys

import jax

from kopt.functional.base import Transform

__all__ = ["NnxVariable", "variables", "transform", "is_nnx_state", "nnx_gradient_hint",
           "tree_mismatch_hint"]


def _nnx():
    from flax import nnx  # imported on first use
    return nnx


def _loaded_nnx():
    """`flax.nnx` if something already imported it, else None (never imports it)."""
    return sys.modules.get("flax.nnx")


def is_nnx_state(obj) -> bool:
    """Whether `obj` is a `flax.nnx.State` (such as the gradients `nnx.grad` returns).

    Never imports flax: if `flax.nnx` is not imported yet, nothing can be an nnx State,
    and this returns False. Works without flax installed.
    """
    nnx = _loaded_nnx()
    state_cls = getattr(nnx, "State", None) if nnx is not None else None
    return isinstance(state_cls, type) and isinstance(obj, state_cls)


_LEAVES_HINT = (
    "nnx.grad returns an nnx.State, a tree like the model's params: pass its leaves, "
    "opt.apply_gradients(zip(jax.tree.leaves(grads), kopt.interop.flax.variables(model))), "
    "or use nnx.Optimizer(model, kopt.interop.flax.transform(tx), wrt=nnx.Param).")


def nnx_gradient_hint(grads) -> str:
    """A hint for the stateful facade when `grads` look like an nnx State, else ''.

    `grads` is what `apply`/`apply_gradients` received as the gradients: an nnx `State`
    itself, or a sequence of its keys (zipping over a State yields its keys, e.g.
    `zip(grads, params)` with `grads` from `nnx.grad`). Never imports flax.
    """
    if is_nnx_state(grads):
        return _LEAVES_HINT
    if _loaded_nnx() is not None and isinstance(grads, (list, tuple)) and grads and all(
            isinstance(g, str) for g in grads):
        return ("The gradients are strings, as when zipping over an nnx.State (which "
                "yields its keys). " + _LEAVES_HINT)
    return ""


def _variable_nodes(treedef, variable_cls) -> list[str]:
    """Names of the nnx Variable node types in `treedef` (walked without recursion)."""
    found, stack = [], [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None and isinstance(data[0], type) and issubclass(data[0], variable_cls):
            found.append(data[0].__name__)
            continue
        stack.extend(node.children())
    return found


def tree_mismatch_hint(expected_treedef, received_treedef=None) -> str:
    """A hint when a kopt transform's state was made from a tree of nnx Variables, else ''.

    `nnx.Optimizer(model, tx)` calls `tx.init` on `nnx.state(model)`, whose leaves are
    wrapped in `nnx.Variable` nodes, and `tx.update` on plain arrays, so the trees differ;
    `kopt.interop.flax.transform(tx)` unwraps them at `init`. For a transform's "the
    gradient tree does not match" error: `expected_treedef` is the tree recorded at
    `init`, `received_treedef` (optional) the gradients'. The hint is given when the
    expected tree has nnx Variable nodes and the received one has none. Never imports
    flax.
    """
    nnx = _loaded_nnx()
    variable_cls = getattr(nnx, "Variable", None) if nnx is not None else None
    if not isinstance(variable_cls, type):
        return ""
    try:
        found = _variable_nodes(expected_treedef, variable_cls)
        if received_treedef is not None and _variable_nodes(received_treedef, variable_cls):
            return ""
    except (AttributeError, TypeError):   # not a PyTreeDef
        return ""
    if not found:
        return ""
    return (f"The optimizer state was made from a tree of nnx.{found[0]} nodes (nnx.Optimizer "
            "passes the model's nnx.State to tx.init) while the gradients are plain arrays. "
            "Give nnx.Optimizer the transform through kopt.interop.flax.transform: "
            "nnx.Optimizer(model, kopt.interop.flax.transform(tx), wrt=nnx.Param).")


class NnxVariable:
    """An `nnx.Variable` seen through the interface the stateful facade updates.

    `value` reads the variable (`get_value()`) and `assign(x)` writes it (`set_value`), so
    `opt.apply_gradients` changes the module in place.
    """

    __slots__ = ("variable", "name")

    def __init__(self, variable, name: str):
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


def variables(model, wrt=None) -> list[NnxVariable]:
    """The variables of `model` selected by the filter `wrt` (default `nnx.Param`), for
    the stateful facade.

    They come in the leaf order of `nnx.state(model, wrt)`, which is also the leaf order of
    the gradients `nnx.grad` returns for the same filter, so
    `zip(jax.tree.leaves(grads), variables(model))` pairs them. Names are the state paths
    (`"linear/kernel"`), usable with `exclude_from_weight_decay(var_names=...)`.
    """
    nnx = _nnx()
    state = nnx.state(model, nnx.Param if wrt is None else wrt)
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

    nnx = _nnx()

    def init_fn(params):
        return tx.init(nnx.as_pure(params))

    return Transform(init_fn, tx.update)
