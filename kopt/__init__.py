"""kopt: JAX optimizers with Keras 3 numerics, in a functional and a stateful layer."""

from kopt import functional, optimizers, schedules
from kopt.stateful import SGD, Adam, AdamW, Optimizer, RMSprop, Variable

__version__ = "0.1.0"

__all__ = [
    "functional",
    "optimizers",
    "schedules",
    "Variable",
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
]
