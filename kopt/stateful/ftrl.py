"""Stateful `Ftrl`, a thin shell over `kopt.functional.ftrl`."""

from __future__ import annotations

from kopt import functional
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.quantize import MIN_QUANTIZED_SIZE
from kopt.stateful.optimizer import Optimizer

__all__ = ["Ftrl"]


class Ftrl(Optimizer):
    """FTRL-Proximal, as `keras.optimizers.Ftrl`.

    The update rule, arguments and defaults are those of `kopt.functional.ftrl` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.
    `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 byte per
    element; see `kopt.functional.sgd` and `get_weights` for the layout.

    `get_weights()`: `[iterations, then for each variable its accumulator and its linear]`
    (variable by variable, as tf.keras's Ftrl).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Ftrl()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
    """

    _factory = staticmethod(functional.ftrl)
    _keras_slot_groups = (("accumulator", "linear"),)

    def __init__(
        self,
        learning_rate=0.001,
        learning_rate_power=-0.5,
        initial_accumulator_value=0.1,
        l1_regularization_strength=0.0,
        l2_regularization_strength=0.0,
        l2_shrinkage_regularization_strength=0.0,
        beta=0.0,
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
            hyper=dict(
                learning_rate_power=learning_rate_power,
                initial_accumulator_value=initial_accumulator_value,
                l1_regularization_strength=l1_regularization_strength,
                l2_regularization_strength=l2_regularization_strength,
                l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength,
                beta=beta,
                state_dtype=state_dtype,
                min_quantized_size=min_quantized_size,
            ),
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
