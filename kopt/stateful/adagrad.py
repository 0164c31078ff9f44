"""Stateful `Adagrad`, a thin shell over `kopt.functional.adagrad`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer, factory=functional.adagrad):
    """Adagrad, with Keras 3's initial accumulator and epsilon inside the root, as `keras.optimizers.Adagrad`.

    The update rule, arguments and defaults are those of `kopt.functional.adagrad` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, accumulator of every variable]`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adagrad()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """
