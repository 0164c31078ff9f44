"""Stateful `AdEMAMix`, a thin shell over `kopt.functional.ademamix`."""

from __future__ import annotations

from kopt.functional.ademamix import ademamix
from kopt.stateful.optimizer import Optimizer

__all__ = ["AdEMAMix"]


class AdEMAMix(Optimizer, factory=ademamix):
    """AdEMAMix (Pagliardini et al., 2024): Adam plus a slow, uncorrected gradient EMA.

    `get_weights()` order: the iteration count, then slot by slot: every variable's `m1`
    (fast EMA), every variable's `m2` (slow EMA), every variable's `nu`.
    """
