"""Stateful `RAdam`, a thin shell over `kopt.functional.radam`."""

from __future__ import annotations

from kopt.functional.radam import radam
from kopt.stateful.optimizer import Optimizer

__all__ = ["RAdam"]


class RAdam(Optimizer, factory=radam):
    """Rectified Adam (Liu et al., 2020): momentum SGD until Adam's step variance is tractable.

    `get_weights()` order: the iteration count, then every variable's `m`, then every
    variable's `v`.
    """
