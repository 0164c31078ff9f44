"""`kopt.Variable`: a mutable, named box around a `jax.Array`."""

from __future__ import annotations

import itertools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from kopt.stateful import multihost

__all__ = ["Variable", "LOCK", "is_variable_like", "read_value", "variable_name", "write_value"]

_uid = itertools.count()

LOCK = threading.RLock()
"""Serialises every optimizer step, optimizer state access and `Variable` read or write
across threads, so that no thread ever sees a buffer that a step donated under it."""


class Variable:
    """A mutable box around a `jax.Array`, updated in place by optimizers.

    The Variable owns its buffer: the constructor and `assign` copy their input, so
    optimizers can donate the buffer to the compiled step and update it in place. An
    array you read from `.value` and still hold when the next step runs is never deleted:
    the step sees the extra reference and copies that buffer instead of reusing it (it
    costs one copy of that variable for that step). Reads and writes are thread-safe.

    Args:
      initial_value: array-like.
      name: optional name; used by `exclude_from_weight_decay(var_names=...)` and in errors.
      trainable: kept for Keras compatibility. Default True.
      dtype: optional dtype to cast the initial value to.
      constraint: optional callable applied to the value after each optimizer step, as
        Keras's `constraint` (e.g. `keras.constraints.NonNeg()`).
    """

    __slots__ = ("_value", "name", "trainable", "constraint", "_uid", "__weakref__")

    def __init__(self, initial_value, name: str | None = None, trainable: bool = True,
                 dtype=None, constraint=None):
        if isinstance(initial_value, Variable):
            initial_value = initial_value.value
        value = jnp.array(initial_value, dtype=dtype, copy=True)
        # A weakly typed value (from a Python scalar) would make the first compiled step
        # trace again on its strongly typed output.
        self._value = value.astype(value.dtype) if value.weak_type else value
        self._uid = next(_uid)
        self.name = name if name is not None else f"variable_{self._uid}"
        self.trainable = trainable
        if constraint is not None and not callable(constraint):
            raise TypeError(f"`constraint` must be callable. Received: constraint={constraint!r}")
        self.constraint = constraint

    @property
    def value(self) -> jax.Array:
        """The current `jax.Array`."""
        with LOCK:
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
        with LOCK:
            self._value = new
        return self

    def assign_add(self, delta) -> Variable:
        return self.assign(self._value + jnp.asarray(delta, self._value.dtype))

    def assign_sub(self, delta) -> Variable:
        return self.assign(self._value - jnp.asarray(delta, self._value.dtype))

    def numpy(self) -> np.ndarray:
        """The whole value as numpy. With several processes (jax.distributed) this is a
        collective (see `kopt.stateful.multihost.to_host`): every process must call it."""
        return multihost.to_host(self.value)

    def __array__(self, dtype=None, copy=None):
        value = multihost.to_host(self.value)
        if copy:
            return np.array(value, dtype=dtype, copy=True)
        return np.asarray(value, dtype=dtype)

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


def is_variable_like(v) -> bool:
    """A kopt.Variable, or any variable-like object (keras.Variable, ...) with `value`,
    `assign`, `shape` and `dtype`."""
    if isinstance(v, Variable):
        return True
    return all(hasattr(v, a) for a in ("value", "assign", "shape", "dtype"))


_ArrayImpl = type(jnp.zeros(()))


def read_value(v):
    if type(v) is Variable:
        return v._value
    value = v.value   # a foreign variable's (keras, nnx): jnp.asarray costs ~0.1 ms on an Array
    return value if type(value) is _ArrayImpl else jnp.asarray(value)


def write_value(v, value):
    if type(v) is Variable:
        v._value = value
    else:   # keras.Variable and friends: their own assign (no copy needed: we own `value`)
        v.assign(value)


def variable_name(v) -> str:
    name = getattr(v, "path", None) or getattr(v, "name", None)
    return str(name) if name is not None else repr(v)
