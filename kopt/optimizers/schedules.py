"""`kopt.optimizers.schedules`: the same objects as `kopt.schedules`."""

from kopt.schedules import (
    Constant,
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    JoinSchedules,
    LearningRateSchedule,
    LinearWarmup,
    OneCycle,
    PiecewiseConstantDecay,
    PolynomialDecay,
    WarmupCosineDecay,
    WarmupStableDecay,
    deserialize,
    serialize,
)

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
    "Constant",
    "LinearWarmup",
    "WarmupCosineDecay",
    "OneCycle",
    "WarmupStableDecay",
    "JoinSchedules",
    "serialize",
    "deserialize",
]
