"""kopt.optimizers: the stateful, Keras-style optimizers (code in `kopt.stateful`).

The same objects as `kopt.stateful` (every name of its `__all__`), plus `schedules`.
"""

from kopt import stateful as _stateful
from kopt.optimizers import schedules
from kopt.stateful import *  # noqa: F403 - the names of kopt.stateful.__all__, re-exported

__all__ = [*_stateful.__all__, "schedules"]
