"""kopt.stateful: the Keras-style facade (also importable as `kopt.optimizers`).

The classes (every optimizer, `Optimizer`, `Variable`, the wrappers) are listed once, in
`kopt.stateful.classes`, and re-exported here and by the top-level `kopt`; this package
adds the config functions (`get`, `serialize`, `deserialize`) and `TransformOptimizer`.
"""

from kopt.stateful import classes
from kopt.stateful.classes import *  # noqa: F403 - the names of classes.__all__
from kopt.stateful.serialization import deserialize, get, serialize
from kopt.stateful.transform_optimizer import TransformOptimizer, TransformState

__all__ = ["get", "serialize", "deserialize", "TransformOptimizer", "TransformState"]
__all__ += classes.__all__
