"""Stateful `ADOPT`, a thin shell over `kopt.functional.adopt`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["ADOPT"]


class ADOPT(Optimizer, factory=functional.adopt):
    """ADOPT (Taniguchi et al., 2024): Adam normalising the gradient by the previous
    second moment; `optax.contrib.adopt(use_clipping=False)`'s numbers."""

    _keras_slot_groups = (("m", "v"),)
