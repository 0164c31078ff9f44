"""Stateful `Adamax`, a thin shell over `kopt.functional.adamax`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adamax"]


class Adamax(Optimizer, factory=functional.adamax):
    """Adamax (Adam with the infinity norm), as `keras.optimizers.Adamax`.

    The update rule, arguments and defaults are those of `kopt.functional.adamax` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, m of every variable, v (the norm) of every variable]`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adamax()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("m", "v"),)
    _keras_slot_names = {"v": "norm"}
