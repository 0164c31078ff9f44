"""Stateful `AdaBelief`, a thin shell over `kopt.functional.adabelief`."""

from __future__ import annotations

from kopt.functional.adabelief import adabelief
from kopt.stateful.optimizer import Optimizer

__all__ = ["AdaBelief"]


class AdaBelief(Optimizer, factory=adabelief):
    """AdaBelief (Zhuang et al., 2020): Adam with the second moment of `g - m`.

    The update rule, arguments and defaults are those of `kopt.functional.adabelief` (whose
    docstring gives the maths and the reference); the rest is the
    `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()` order: the iteration count, then every variable's `m`, then every
    variable's `s`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.AdaBelief()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """
