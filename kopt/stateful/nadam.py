"""Stateful `Nadam`, a thin shell over `kopt.functional.nadam`."""

from __future__ import annotations

from kopt import functional
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.quantize import MIN_QUANTIZED_SIZE
from kopt.stateful.optimizer import Optimizer

__all__ = ["Nadam"]


class Nadam(Optimizer):
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

    _factory = staticmethod(functional.nadam)
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
        state_dtype=None,
        min_quantized_size=MIN_QUANTIZED_SIZE,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            hyper=dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                       state_dtype=state_dtype, min_quantized_size=min_quantized_size),
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
