"""kopt.optimizers: the stateful, Keras-style optimizers (code in `kopt.stateful`)."""

from kopt.optimizers import schedules
from kopt.stateful import (
    SGD,
    Adam,
    AdamW,
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
    "get",
    "serialize",
    "deserialize",
    "schedules",
]
