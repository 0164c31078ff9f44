"""Stateful `Adadelta`, a thin shell over `kopt.functional.adadelta`."""

from __future__ import annotations

from kopt import functional
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    """Adadelta, as `keras.optimizers.Adadelta`.

    The update rule, arguments and defaults are those of `kopt.functional.adadelta` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.

    `get_weights()`: `[iterations, accum_grad of every variable, accum_var of every variable]`.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Adadelta()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _factory = staticmethod(functional.adadelta)

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.95,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        name=None,
        bucket_threshold=DEFAULT_BUCKET_THRESHOLD,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            hyper=dict(rho=rho, epsilon=epsilon),
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            name=name,
            bucket_threshold=bucket_threshold,
            **kwargs,
        )
