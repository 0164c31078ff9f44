"""Stateful `RAdam`, a thin shell over `kopt.functional.radam`."""

from __future__ import annotations

from kopt.functional.radam import radam
from kopt.stateful.optimizer import Optimizer

__all__ = ["RAdam"]


class RAdam(Optimizer, factory=radam):
    """Rectified Adam (Liu et al., 2020): momentum SGD until Adam's step variance is tractable.

    The update rule, arguments and defaults are those of `kopt.functional.radam` (whose
    docstring gives the maths and the reference); the rest is the
    `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()` order: the iteration count, then every variable's `m`, then every
    variable's `v`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.RAdam()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """
