"""Stateful `Lamb`, a thin shell over `kopt.functional.lamb`."""

from __future__ import annotations

from kopt.functional.lamb import lamb
from kopt.stateful.optimizer import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer, factory=lamb):
    """Lamb (Adam with a per-tensor trust ratio), as `keras.optimizers.Lamb`.

    The update rule, arguments and defaults are those of `kopt.functional.lamb` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.

    `get_weights()`: `[iterations, m of every variable, v of every variable]` (Keras's
    momentums, then velocities). The cross-cutting options append their state as
    described in `Optimizer.get_weights`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Lamb()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("m", "v"),)
