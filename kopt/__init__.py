"""kopt: JAX optimizers with Keras 3 numerics, in a functional and a stateful layer."""

from kopt import functional, optimizers, schedules
from kopt.stateful import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Ftrl,
    Lion,
    Nadam,
    Optimizer,
    RMSprop,
    Variable,
)

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
    "Adadelta",
    "Adagrad",
    "Adamax",
    "Nadam",
    "Ftrl",
    "Lion",
]
