"""Stateful `Adafactor`, a thin shell over `kopt.functional.adafactor`."""

from __future__ import annotations

from kopt.functional.adafactor import adafactor
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adafactor"]


class Adafactor(Optimizer, factory=adafactor):
    """Adafactor with factored second moments, as `keras.optimizers.Adafactor`.

    `get_weights()`: `[iterations, r of every variable, c of every variable, v of every
    variable]`. For a variable of rank >= 2, `r` has the shape `shape[:-1]` and `c` the
    shape `shape[:-2] + shape[-1:]`; for rank < 2 both are 0-d zeros (Keras's
    placeholders). `v` has the variable's shape. The cross-cutting options append their
    state as described in `Optimizer.get_weights`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((4, 3)), name="w")
      >>> opt = kopt.optimizers.Adafactor()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
      >>> [x.shape for x in opt.get_weights()]
      [(), (4,), (3,), (4, 3)]
    """

    _keras_slot_groups = (("r", "c", "v"),)
