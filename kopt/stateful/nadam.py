"""Stateful `Nadam`, a thin shell over `kopt.functional.nadam`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Nadam"]


class Nadam(Optimizer, factory=functional.nadam):
    """Nadam with the 0.96^t momentum schedule, as `keras.optimizers.Nadam`.

    The update rule, arguments and defaults are those of `kopt.functional.nadam` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, momentum_cache, m of every variable, v of every variable]`;
    `momentum_cache` is the 0-d running product of the momentum schedule.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Nadam()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("m", "v"),)
