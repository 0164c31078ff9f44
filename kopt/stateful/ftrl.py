"""Stateful `Ftrl`, a thin shell over `kopt.functional.ftrl`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Ftrl"]


class Ftrl(Optimizer, factory=functional.ftrl):
    """FTRL-Proximal, as `keras.optimizers.Ftrl`.

    The update rule, arguments and defaults are those of `kopt.functional.ftrl` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, then for each variable its accumulator and its linear]`
    (variable by variable, as tf.keras's Ftrl).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Ftrl()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("accumulator", "linear"),)
