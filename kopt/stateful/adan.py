"""Stateful `Adan`, a thin shell over `kopt.functional.adan`."""

from __future__ import annotations

from kopt.functional.adan import adan
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adan"]


class Adan(Optimizer, factory=adan):
    """Adan (Xie et al., 2022): adaptive Nesterov momentum from gradient differences.

    `get_weights()` order: the iteration count, then slot by slot: every variable's `m`,
    every variable's `v`, every variable's `n`, every variable's `prev_grad`.
    """
