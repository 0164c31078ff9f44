"""`OptimizerVariable`: a Keras-style, variable-like view of one entry of an optimizer's state.

`optimizer.variables` and `optimizer.iterations` hand these out, as Keras 3 hands out
`keras.Variable`s: each has `.value`, `.numpy()`, `.name`, `.path`, `.shape`, `.dtype` and
`.assign(x)`, works with `np.asarray`, `int()` and arithmetic, and always reads the
optimizer's *current* state (it is a view, not a snapshot).

It is also a pytree with one leaf, its value, so a list of them can be passed straight into
a jitted function (Keras's guide "Writing a training loop from scratch in JAX" does that
with `optimizer.variables`); inside, `.value` is the traced array.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from kopt.stateful import multihost

__all__ = ["OptimizerVariable"]


class OptimizerVariable:
    """A named, variable-like view of one array of an optimizer's state.

    Args:
      name: the entry's name (Keras style, e.g. `"kernel_m"`, `"iteration"`).
      path: `"<optimizer name>/<name>"`.
      read: returns the current array; or None for a detached value (inside jit).
      write: stores a new array (validated by the optimizer); None when read-only.
      value: the detached value, when `read` is None.
    """

    __slots__ = ("name", "path", "_read", "_write", "_detached")

    def __init__(self, name: str, path: str, read: Callable[[], Any] | None = None,
                 write: Callable[[Any], None] | None = None, value=None):
        self.name = name
        self.path = path
        self._read = read
        self._write = write
        self._detached = value

    @property
    def value(self):
        """The current array (a copy that later steps never delete)."""
        return self._detached if self._read is None else self._read()

    def assign(self, value) -> OptimizerVariable:
        """Replace this entry of the optimizer's state (same shape; cast to its dtype)."""
        if self._write is None:
            raise ValueError(f"Optimizer variable {self.path!r} cannot be assigned.")
        self._write(value)
        return self

    def numpy(self) -> np.ndarray:
        """The whole value as numpy (a collective with several processes, as
        `get_weights`)."""
        return multihost.to_host(self.value)

    def __array__(self, dtype=None, copy=None):
        return np.array(self.numpy(), dtype=dtype, copy=True if copy is None else copy)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return operator.index(np.asarray(self.value).item())

    def __float__(self) -> float:
        return float(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __format__(self, spec: str) -> str:
        return format(np.asarray(self.value).item() if self.shape == () else self.numpy(), spec)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        try:
            value = np.asarray(self.value)
            return f"<OptimizerVariable path={self.path!r} shape={value.shape} dtype={value.dtype}>"
        except Exception:   # noqa: BLE001 - a repr must not raise
            return f"<OptimizerVariable path={self.path!r}>"


def _binary(op, reflected=False):
    if reflected:
        return lambda self, other: op(other, self.value)
    return lambda self, other: op(self.value, other)


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv),
                   ("mod", operator.mod), ("pow", operator.pow), ("matmul", operator.matmul)]:
    setattr(OptimizerVariable, f"__{_name}__", _binary(_op))
    setattr(OptimizerVariable, f"__r{_name}__", _binary(_op, reflected=True))
for _name, _op in [("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt),
                   ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge)]:
    setattr(OptimizerVariable, f"__{_name}__", _binary(_op))
OptimizerVariable.__neg__ = lambda self: -self.value
OptimizerVariable.__abs__ = lambda self: abs(self.value)


def _flatten(v: OptimizerVariable):
    return (v.value,), (v.name, v.path)


def _unflatten(aux, children) -> OptimizerVariable:
    name, path = aux
    return OptimizerVariable(name, path, value=children[0])


jax.tree_util.register_pytree_node(OptimizerVariable, _flatten, _unflatten)
