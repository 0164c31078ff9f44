"""Stateful `LARS`, a thin shell over `kopt.functional.lars`."""

from __future__ import annotations

import re

from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.lars import lars
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.variable import variable_name

__all__ = ["LARS"]


class LARS(Optimizer, factory=lars):
    """LARS (You et al., 2017): momentum SGD with a layer-wise trust ratio.

    The update rule, arguments and defaults are those of `kopt.functional.lars` (whose
    docstring gives the maths and the reference); the rest is the
    `kopt.optimizers.Optimizer` facade.

    In place of the functional `trust_ratio_mask`, `exclude_from_layer_adaptation` takes
    a list of regular expressions, as TF Model Garden's LARS: a variable whose name (or
    path) matches one with `re.search` gets plain momentum SGD, with no trust ratio.
    `exclude_from_weight_decay` excludes variables from both weight decays (the coupled
    `coupled_weight_decay` and the decoupled `weight_decay`).

    `get_weights()` order: the iteration count, then every variable's `momentum` (none
    when `momentum=0`).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((3, 2)), name="kernel")
      >>> b = kopt.Variable(jnp.zeros((2,)), name="bias")
      >>> opt = kopt.optimizers.LARS(1.0, coupled_weight_decay=1e-4,
      ...                            exclude_from_layer_adaptation=["bias"])
      >>> opt.exclude_from_weight_decay(var_names=["bias"])
      >>> grads = jax.grad(lambda p: jnp.sum(p[0] ** 2) + jnp.sum(p[1] ** 2))([w.value, b.value])
      >>> int(opt.apply_gradients(zip(grads, [w, b])))
      1
    """

    def __init__(
        self,
        learning_rate=1.0,
        momentum=0.9,
        nesterov=False,
        trust_coefficient=0.001,
        coupled_weight_decay=0.0,
        epsilon=0.0,
        exclude_from_layer_adaptation=None,
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
        patterns = exclude_from_layer_adaptation
        if patterns is not None:
            if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
                raise ValueError(
                    "`exclude_from_layer_adaptation` must be a list of regular expressions "
                    f"(str) or None. Received: exclude_from_layer_adaptation={patterns!r}")
            patterns = list(patterns)
        super().__init__(
            learning_rate=learning_rate,
            hyper=dict(momentum=momentum, nesterov=nesterov, trust_coefficient=trust_coefficient,
                       coupled_weight_decay=coupled_weight_decay, epsilon=epsilon,
                       exclude_from_layer_adaptation=patterns),
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

    def _make_transform(self, mask=None):
        """The base class's transform, with the name patterns turned into a
        `trust_ratio_mask` over the built variables (a tuple, like the params)."""
        hyper = dict(self._hyper)
        patterns = hyper.pop("exclude_from_layer_adaptation")
        adapt = None
        if patterns and self._vars is not None:
            adapt = tuple(not any(re.search(p, variable_name(v)) for p in patterns)
                          for v in self._vars)
        return lars(
            learning_rate=self._learning_rate, **hyper, **self._common_kwargs(),
            trust_ratio_mask=adapt, weight_decay_mask=mask,
            bucket_threshold=self.bucket_threshold,
        )
