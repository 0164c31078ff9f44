"""Stateful `AdaBelief`, a thin shell over `kopt.functional.adabelief`."""

from __future__ import annotations

from kopt.functional.adabelief import adabelief
from kopt.stateful.optimizer import Optimizer

__all__ = ["AdaBelief"]


class AdaBelief(Optimizer, factory=adabelief):
    """AdaBelief (Zhuang et al., 2020): Adam with the second moment of `g - m`.

    `get_weights()` order: the iteration count, then every variable's `m`, then every
    variable's `s`.
    """
