"""The schedule protocol shared by both layers, and its (de)serialisation."""

from __future__ import annotations

from typing import Any

__all__ = ["LearningRateSchedule", "serialize", "deserialize", "register"]

_REGISTRY: dict[str, type[LearningRateSchedule]] = {}


def register(cls: type[LearningRateSchedule]) -> type[LearningRateSchedule]:
    """Class decorator: make a schedule known to `deserialize` by its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class LearningRateSchedule:
    """A pure callable `schedule(step) -> learning_rate`.

    `step` is the number of updates applied so far (Keras's `iterations` before it is
    incremented). Subclasses compute with `jax.numpy` only, so a schedule works under
    `jit` and `vmap`, and implement `get_config`; `from_config` calls the constructor.
    """

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """`{'class_name': ..., 'config': ...}`, the form Keras uses inside optimizer configs."""
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "serialize() expects a kopt LearningRateSchedule. "
            f"Received: {schedule!r} of type {type(schedule).__name__}"
        )
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict[str, Any]) -> LearningRateSchedule:
    """Inverse of `serialize`. Also accepts Keras's `module`/`registered_name` keys."""
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(
            "A schedule config must be a dict with keys 'class_name' and 'config'. "
            f"Received: {config!r}"
        )
    name = config["class_name"]
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown learning-rate schedule {name!r}. Known schedules: {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name].from_config(dict(config["config"]))
