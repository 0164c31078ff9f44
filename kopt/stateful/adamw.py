"""Stateful `AdamW`, a thin shell over `kopt.functional.adamw`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["AdamW"]


class AdamW(Optimizer, factory=functional.adamw):
    """Adam with decoupled weight decay (default 0.004), as `keras.optimizers.AdamW`."""

    _keras_slot_groups = (("m", "v"), ("vhat",))
