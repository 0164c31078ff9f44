"""Stateful `Adan`, a thin shell over `kopt.functional.adan`."""

from __future__ import annotations

from kopt.functional.adan import adan
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adan"]


class Adan(Optimizer, factory=adan):
    """Adan (Xie et al., 2022): adaptive Nesterov momentum from gradient differences.

    The update rule, arguments and defaults are those of `kopt.functional.adan` (whose
    docstring gives the maths and the reference); the rest is the
    `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()` order: the iteration count, then slot by slot: every variable's `m`,
    every variable's `v`, every variable's `n`, every variable's `prev_grad`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adan()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """
