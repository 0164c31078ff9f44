"""kopt: JAX optimizers with Keras 3 numerics, in a functional and a stateful layer."""

from kopt import functional, optimizers, schedules
from kopt.stateful import (
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Ftrl,
    Lamb,
    Lion,
    MultiOptimizer,
    Nadam,
    Optimizer,
    OptimizerMap,
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
    "Adafactor",
    "Lamb",
    "MultiOptimizer",
    "OptimizerMap",
]
