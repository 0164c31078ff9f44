"""kopt: JAX optimizers with Keras 3 numerics, in a functional and a stateful layer."""

from kopt import functional, optimizers, schedules
from kopt.stateful import classes
from kopt.stateful.classes import *  # noqa: F403 - every optimizer class, Optimizer, Variable

__version__ = "0.1.0"

__all__ = ["functional", "optimizers", "schedules"]
__all__ += classes.__all__   # the classes' one list: kopt.Adam is kopt.optimizers.Adam
