"""Stateful `Adam`, a thin shell over `kopt.functional.adam`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adam"]


class Adam(Optimizer, factory=functional.adam):
    """Adam in Keras's epsilon-hat form, as `keras.optimizers.Adam`.

    The update rule, arguments and defaults are those of `kopt.functional.adam` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adam()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("m", "v"), ("vhat",))
