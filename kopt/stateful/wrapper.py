"""`Wrapper`: the base of the stateful optimizers that hold others instead of a rule.

`LossScaleOptimizer`, `MultiOptimizer` and `TransformOptimizer` run a step of their own
(a loss-scaled, partitioned or counted transform) over state that their inner
optimizer(s) or transform keep. They share the `Facade` (the step machinery and the
Keras-visible surface) with the engine, `Optimizer`, but not the engine itself: its
constructor, cross-cutting options, learning-rate handling, configs and weight layouts
are the inner optimizers' business, reached by delegation.

A subclass is registered as a virtual subclass of `Optimizer`, so `isinstance(wrapper,
kopt.optimizers.Optimizer)` holds, as it does for Keras's wrappers, and anything that
accepts an optimizer accepts a wrapper. Two engine methods that only use the `Facade`
surface are delegated to rather than rewritten: `minimize` (after `_sync`, so a wrapper
follows its inner optimizers first) and the loss step it compiles; so are `scale_loss`
and the `from_transform` constructor.
"""

from __future__ import annotations

from kopt.stateful.facade import Facade
from kopt.stateful.optimizer import Optimizer

__all__ = ["Wrapper"]


class Wrapper(Facade):
    """The shared base of kopt's wrapper optimizers (see the module docstring)."""

    loss_scale_factor = None
    """No fixed loss scale of its own (a `MultiOptimizer` passes one on to its optimizers)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Optimizer.register(cls)

    def __init__(self, name: str):
        self._init_facade(name)

    def minimize(self, loss_fn, variables, *args, **kwargs):
        """`Optimizer.minimize` on this wrapper's step: differentiate `loss_fn(values,
        *args)` and apply the update in one compiled call; returns the loss. Whatever
        the engine's `minimize` takes, this takes too."""
        self._sync()
        return Optimizer.minimize(self, loss_fn, variables, *args, **kwargs)

    _loss_step_fn = Optimizer._loss_step_fn
    scale_loss = Optimizer.scale_loss   # `loss * loss_scale_factor` (or `loss` when None)
    from_transform = Optimizer.from_transform
