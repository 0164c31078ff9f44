"""Stateful `Adafactor`, a thin shell over `kopt.functional.adafactor`."""

from __future__ import annotations

from kopt.functional.adafactor import adafactor
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adafactor"]


class Adafactor(Optimizer):
    """Adafactor with factored second moments, as `keras.optimizers.Adafactor`.

    The update rule, arguments and defaults are those of `kopt.functional.adafactor`
    (whose docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.

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

    _factory = staticmethod(adafactor)
    _keras_slot_groups = (("r", "c", "v"),)

    def __init__(
        self,
        learning_rate=0.001,
        beta_2_decay=-0.8,
        epsilon_1=1e-30,
        epsilon_2=1e-3,
        clip_threshold=1.0,
        relative_step=True,
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
            hyper=dict(beta_2_decay=beta_2_decay, epsilon_1=epsilon_1, epsilon_2=epsilon_2,
                       clip_threshold=clip_threshold, relative_step=relative_step),
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
