"""Learning-rate schedules: pure `schedule(step) -> lr` callables used by both layers.

Keras 3's six (same arguments, formulas and configs) and, beyond Keras, `Constant`,
`LinearWarmup`, `WarmupCosineDecay`, `OneCycle`, `WarmupStableDecay` and
`JoinSchedules`. Every schedule works under `jit` and `vmap`, returns float32, and
round-trips through `get_config`/`from_config` and `serialize`/`deserialize`.
"""

from kopt.schedules.base import LearningRateSchedule, deserialize, register, serialize
from kopt.schedules.constant import Constant
from kopt.schedules.cosine_decay import CosineDecay
from kopt.schedules.cosine_decay_restarts import CosineDecayRestarts
from kopt.schedules.exponential_decay import ExponentialDecay
from kopt.schedules.inverse_time_decay import InverseTimeDecay
from kopt.schedules.join import JoinSchedules
from kopt.schedules.one_cycle import OneCycle
from kopt.schedules.piecewise_constant_decay import PiecewiseConstantDecay
from kopt.schedules.polynomial_decay import PolynomialDecay
from kopt.schedules.warmup import LinearWarmup
from kopt.schedules.warmup_cosine import WarmupCosineDecay
from kopt.schedules.wsd import WarmupStableDecay

__all__ = [
    "LearningRateSchedule",
    # Keras 3's schedules
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
    # beyond Keras
    "Constant",
    "LinearWarmup",
    "WarmupCosineDecay",
    "OneCycle",
    "WarmupStableDecay",
    "JoinSchedules",
    # (de)serialisation
    "serialize",
    "deserialize",
    "register",
]
