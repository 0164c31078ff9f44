"""Optimizer configs: `get`, `serialize`, `deserialize` and the config-tree checks.

The classes are found by name in `kopt.stateful.registry`; the config-tree checks live in
`kopt.stateful.config_tree`, which imports nothing of kopt, so that `Optimizer.from_config`
runs them too without an import cycle (this module imports `Optimizer`).
"""

from __future__ import annotations

from typing import Any

from kopt import schedules
from kopt.stateful import registry
from kopt.stateful.config_tree import MAX_CONFIG_DEPTH, MAX_CONFIG_ENTRIES, check_config_tree
from kopt.stateful.optimizer import Optimizer

__all__ = ["get", "serialize", "deserialize", "check_config_tree", "MAX_CONFIG_DEPTH",
           "MAX_CONFIG_ENTRIES"]

# Keys of a serialised optimizer (Keras 3 writes `module` and `registered_name` too).
_TOP_KEYS = ("class_name", "config", "module", "registered_name")


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """`{'class_name': 'Adam', 'config': {...}}`, as Keras serialises optimizers."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"serialize expects a kopt optimizer. Received: {optimizer!r}")
    return {"module": "kopt.optimizers", "class_name": type(optimizer).__name__,
            "config": optimizer.get_config()}


def deserialize(config: dict[str, Any]) -> Optimizer:
    """Inverse of `serialize`; the class name is matched case-insensitively.

    Only kopt's own optimizers are found, by name: a `class_name` such as
    `'os.system'` or `'package>Class'` is an unknown name (a `ValueError`), nothing is
    imported. Malformed configs raise `ValueError` or `TypeError` naming the key.
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "An optimizer config must be a dict with a 'class_name' key (and an optional "
            f"'config' dict). Received: {_short(config)}"
        )
    check_config_tree(config)
    unknown = [k for k in config if k not in _TOP_KEYS]
    if unknown:
        raise ValueError(
            f"Unknown key(s) {unknown} in the optimizer config; expected only {list(_TOP_KEYS)}."
            f" Received: {_short(config)}")
    name = config["class_name"]
    if not isinstance(name, str):
        raise TypeError(
            "The optimizer config's 'class_name' must be a string. Received: "
            f"class_name={_short(name)} of type {type(name).__name__}")
    inner = config.get("config", {})
    if not isinstance(inner, dict):
        raise ValueError(
            f"The optimizer config's 'config' must be a dict. Received: config={_short(inner)}"
            f" of type {type(inner).__name__}")
    wrapper = registry.CONFIG_ONLY.get(name.lower().replace("_", ""))
    cls = wrapper or registry.lookup(name)
    inner = dict(inner)
    lr = inner.get("learning_rate")
    if wrapper is None and isinstance(lr, dict):
        inner["learning_rate"] = _schedule(lr)
    return cls.from_config(inner)


def _schedule(config: dict):
    """The schedule of a `learning_rate` config entry, with errors naming that key."""
    try:
        return schedules.deserialize(config)
    except RecursionError:   # pragma: no cover - bounded by check_config_tree
        raise ValueError("config['learning_rate']: the schedule config is nested too deeply.") \
            from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(
            f"config['learning_rate'] is not a valid learning-rate schedule config: {e}"
        ) from e


def _short(x, limit: int = 200) -> str:
    """`repr(x)`, cut to `limit` characters (a config can be huge)."""
    try:
        text = repr(x)
    except RecursionError:   # a self-containing dict
        text = f"<{type(x).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def get(identifier) -> Optimizer | None:
    """An optimizer from a name (`'adam'`), a config dict, or an instance (returned as is).

    `None` gives None, as `keras.optimizers.get(None)`.
    """
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return registry.lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        "Could not interpret optimizer identifier: expected a name, a config dict or an "
        f"optimizer. Received: {_short(identifier)}"
    )
