"""Stateful `ScheduleFreeAdamW`, a thin shell over `kopt.functional.schedule_free`."""

from kopt.functional.schedule_free import schedule_free_adamw, schedule_free_eval_params
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.variable import read_value

__all__ = ["ScheduleFreeAdamW"]


class ScheduleFreeAdamW(Optimizer, factory=schedule_free_adamw):
    """Schedule-Free AdamW, as `keras.optimizers.ScheduleFreeAdamW`.

    The variables hold the training point `y`; evaluate (or export) at the average `x`,
    which `eval_values()` returns, then put the training values back. `get_weights()`:
    `[iterations, z of every variable, v of every variable]`, with `z` the SGD sequence
    (Keras's `momentum`, the variables' values at build), `v` the second moment.

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

    _keras_slot_groups = (("z", "v"),)
    _keras_slot_names = {"z": "momentum"}

    def eval_values(self) -> list:
        """The average `x = (y - (1 - beta_1) z) / beta_1` of each variable (new arrays)."""
        if not self.built:
            raise ValueError("eval_values() needs a built optimizer: call build() or "
                             "apply_gradients() first.")
        values = tuple(read_value(v) for v in self._vars)
        return list(schedule_free_eval_params(values, self._state, self.beta_1))
