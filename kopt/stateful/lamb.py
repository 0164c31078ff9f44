"""Stateful `Lamb`, a thin shell over `kopt.functional.lamb`."""

from __future__ import annotations

from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.lamb import lamb
from kopt.stateful.optimizer import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer):
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

    _factory = staticmethod(lamb)
    _keras_slot_groups = (("m", "v"),)

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        bucket_threshold=DEFAULT_BUCKET_THRESHOLD,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            hyper=dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon),
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            bucket_threshold=bucket_threshold,
            **kwargs,
        )
