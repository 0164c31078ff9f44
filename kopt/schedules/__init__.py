"""Learning-rate schedules: pure `schedule(step) -> lr` callables used by both layers."""

from kopt.schedules.base import LearningRateSchedule, deserialize, register, serialize
from kopt.schedules.exponential_decay import ExponentialDecay

__all__ = ["LearningRateSchedule", "ExponentialDecay", "serialize", "deserialize", "register"]
