"""kopt.optimizers: the stateful, Keras-style optimizers (code in `kopt.stateful`)."""

from kopt.optimizers import schedules
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
    deserialize,
    get,
    serialize,
)

__all__ = [
    "Optimizer",
    "Variable",
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
    "get",
    "serialize",
    "deserialize",
    "schedules",
]
