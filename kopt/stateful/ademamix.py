"""Stateful `AdEMAMix`, a thin shell over `kopt.functional.ademamix`."""

from __future__ import annotations

from kopt.functional.ademamix import ademamix
from kopt.stateful.optimizer import Optimizer

__all__ = ["AdEMAMix"]


class AdEMAMix(Optimizer, factory=ademamix):
    """AdEMAMix (Pagliardini et al., 2024): Adam plus a slow, uncorrected gradient EMA.

    The update rule, arguments and defaults are those of `kopt.functional.ademamix` (whose
    docstring gives the maths and the reference); the rest is the
    `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()` order: the iteration count, then slot by slot: every variable's `m1`
    (fast EMA), every variable's `m2` (slow EMA), every variable's `nu`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.AdEMAMix()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """
