"""`kopt.optimizers.schedules`: the same objects as `kopt.schedules`."""

from kopt.schedules import (
    ExponentialDecay,
    LearningRateSchedule,
    deserialize,
    serialize,
)

__all__ = ["LearningRateSchedule", "ExponentialDecay", "serialize", "deserialize"]
