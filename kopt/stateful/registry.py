"""String identifiers and configs: `get`, `serialize`, `deserialize`."""

from __future__ import annotations

from typing import Any

from kopt.stateful.adabelief import AdaBelief
from kopt.stateful.adadelta import Adadelta
from kopt.stateful.adafactor import Adafactor
from kopt.stateful.adagrad import Adagrad
from kopt.stateful.adam import Adam
from kopt.stateful.adamax import Adamax
from kopt.stateful.adamw import AdamW
from kopt.stateful.adan import Adan
from kopt.stateful.ademamix import AdEMAMix
from kopt.stateful.ftrl import Ftrl
from kopt.stateful.lamb import Lamb
from kopt.stateful.lars import LARS
from kopt.stateful.lion import Lion
from kopt.stateful.muon import Muon
from kopt.stateful.nadam import Nadam
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.radam import RAdam
from kopt.stateful.rmsprop import RMSprop
from kopt.stateful.schedule_free import ScheduleFreeAdamW
from kopt.stateful.sgd import SGD

__all__ = ["get", "serialize", "deserialize", "ALL_OPTIMIZERS"]

ALL_OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (
        SGD, RMSprop, Adam, AdamW, Adadelta, Adagrad, Adamax, Nadam, Ftrl, Lion, Adafactor, Lamb,
        RAdam, AdaBelief, Adan, AdEMAMix, LARS, Muon, ScheduleFreeAdamW,
    )
}


def _lookup(name: str) -> type[Optimizer]:
    key = name.lower().replace("_", "")
    if key not in ALL_OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer identifier {name!r}. Valid names (case-insensitive): "
            f"{sorted(ALL_OPTIMIZERS)}"
        )
    return ALL_OPTIMIZERS[key]


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """`{'class_name': 'Adam', 'config': {...}}`, as Keras serialises optimizers."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"serialize expects a kopt optimizer. Received: {optimizer!r}")
    return {"module": "kopt.optimizers", "class_name": type(optimizer).__name__,
            "config": optimizer.get_config()}


def deserialize(config: dict[str, Any]) -> Optimizer:
    """Inverse of `serialize`; the class name is matched case-insensitively."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "An optimizer config must be a dict with a 'class_name' key (and an optional "
            f"'config' dict). Received: {config!r}"
        )
    inner = config.get("config", {})
    if not isinstance(inner, dict):
        raise ValueError(f"The optimizer config's 'config' must be a dict. Received: {inner!r}")
    key = str(config["class_name"]).lower().replace("_", "")
    cls = _config_only().get(key) or _lookup(str(config["class_name"]))
    return cls.from_config(inner)


def _config_only() -> dict[str, type[Optimizer]]:
    """Wrappers that `deserialize` rebuilds but `get('name')` cannot (they need arguments)."""
    from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
    from kopt.stateful.multi_optimizer import MultiOptimizer
    return {"multioptimizer": MultiOptimizer, "lossscaleoptimizer": LossScaleOptimizer}


def get(identifier) -> Optimizer:
    """An optimizer from a name (`'adam'`), a config dict, or an instance (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        "Could not interpret optimizer identifier: expected a name, a config dict or an "
        f"optimizer. Received: {identifier!r}"
    )
