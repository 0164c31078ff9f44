"""Stateful `SGD`, a thin shell over `kopt.functional.sgd`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer, factory=functional.sgd):
    """Gradient descent with optional (Nesterov) momentum, as `keras.optimizers.SGD`."""
