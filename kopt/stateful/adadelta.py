"""Stateful `Adadelta`, a thin shell over `kopt.functional.adadelta`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer, factory=functional.adadelta):
    """Adadelta, as `keras.optimizers.Adadelta`.

    The update rule, arguments and defaults are those of `kopt.functional.adadelta` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, accum_grad of every variable, accum_var of every variable]`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adadelta()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _keras_slot_groups = (("accum_grad", "accum_var"),)
    _keras_slot_names = {"accum_grad": "accumulated_grad", "accum_var": "accumulated_delta_var"}
