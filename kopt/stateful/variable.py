"""`kopt.Variable`: a mutable, named box around a `jax.Array`."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from kopt.stateful import multihost

__all__ = ["Variable"]

_uid = itertools.count()


class Variable:
    """A mutable box around a `jax.Array`, updated in place by optimizers.

    The Variable owns its buffer: the constructor and `assign` copy their input, so
    optimizers can donate the buffer to the compiled step. An array read earlier from
    `.value` is then deleted by the next `apply_gradients` (reading it raises JAX's
    "Array has been deleted" error); read `.value` again, or copy it (`np.array(v)`, or
    `jnp.copy(v.value)`) to keep a snapshot. A zero-copy host view such as `np.asarray(v)`
    stays valid but makes that step copy the buffer instead of reusing it.

    Args:
      initial_value: array-like.
      name: optional name; used by `exclude_from_weight_decay(var_names=...)` and in errors.
      trainable: kept for Keras compatibility. Default True.
      dtype: optional dtype to cast the initial value to.
    """

    __slots__ = ("_value", "name", "trainable", "_uid", "__weakref__")

    def __init__(self, initial_value, name: str | None = None, trainable: bool = True,
                 dtype=None):
        if isinstance(initial_value, Variable):
            initial_value = initial_value.value
        value = jnp.array(initial_value, dtype=dtype, copy=True)
        # A weakly typed value (from a Python scalar) would make the first compiled step
        # trace again on its strongly typed output.
        self._value = value.astype(value.dtype) if value.weak_type else value
        self._uid = next(_uid)
        self.name = name if name is not None else f"variable_{self._uid}"
        self.trainable = trainable

    @property
    def value(self) -> jax.Array:
        """The current `jax.Array`."""
        return self._value

    def assign(self, value) -> Variable:
        """Replace the value (copied) with one of the same shape; it is cast to this dtype."""
        if isinstance(value, Variable):
            value = value.value
        new = jnp.array(value, dtype=self._value.dtype, copy=True)
        if new.shape != self._value.shape:
            raise ValueError(
                f"Cannot assign a value of shape {new.shape} to Variable {self.name!r} "
                f"of shape {self._value.shape}."
            )
        self._value = new
        return self

    def assign_add(self, delta) -> Variable:
        return self.assign(self._value + jnp.asarray(delta, self._value.dtype))

    def assign_sub(self, delta) -> Variable:
        return self.assign(self._value - jnp.asarray(delta, self._value.dtype))

    def numpy(self) -> np.ndarray:
        return multihost.to_host(self._value)

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(multihost.to_host(self._value), dtype=dtype, copy=True)
        return np.asarray(multihost.to_host(self._value), dtype=dtype)

    def __getstate__(self):
        return multihost.variable_getstate(self)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self):
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    def __repr__(self):
        return f"<kopt.Variable {self.name!r} shape={self.shape} dtype={self.dtype}>"
