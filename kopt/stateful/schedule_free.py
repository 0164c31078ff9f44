"""Stateful `ScheduleFreeAdamW`, a thin shell over `kopt.functional.schedule_free`."""

from __future__ import annotations

import jax

from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.schedule_free import schedule_free_adamw, schedule_free_eval_params
from kopt.stateful.optimizer import Optimizer, _read

__all__ = ["ScheduleFreeAdamW"]


class ScheduleFreeAdamW(Optimizer):
    """Schedule-Free AdamW, as `keras.optimizers.ScheduleFreeAdamW`.

    The update rule, arguments and defaults are those of
    `kopt.functional.schedule_free_adamw` (whose docstring gives the maths); the rest is
    the `kopt.optimizers.Optimizer` facade.

    The variables hold the training point `y`. Evaluate at the average `x`, which
    `eval_values()` returns (one array per variable); assign it for evaluation or export,
    and put the training values back before training on.

    `get_weights()`: `[iterations, z of every variable, v of every variable]`, where `z`
    is the SGD sequence (Keras's `momentum`, initialised to the variables' values at
    build) and `v` the second moment (Keras's `velocity`).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.ScheduleFreeAdamW()
      >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
      >>> int(opt.apply_gradients([(grads, w)]))
      1
      >>> train = w.value
      >>> _ = w.assign(opt.eval_values()[0])    # evaluate at x ...
      >>> _ = w.assign(train)                   # ... then train on from y
    """

    _factory = staticmethod(schedule_free_adamw)
    _keras_slot_groups = (("z", "v"),)
    _keras_slot_names = {"z": "momentum"}

    def __init__(
        self,
        learning_rate=0.0025,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        warmup_steps=0,
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
            hyper=dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, warmup_steps=warmup_steps),
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

    def eval_values(self) -> list[jax.Array]:
        """The averaged point `x = (y - (1 - beta_1) z) / beta_1` of every built variable,
        in build order (new arrays; the variables are not changed)."""
        if not self.built:
            raise ValueError("eval_values() needs a built optimizer: call build() or "
                             "apply_gradients() first.")
        values = tuple(_read(v) for v in self._vars)
        return list(schedule_free_eval_params(values, self._state, self.beta_1))
