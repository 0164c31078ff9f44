"""The registry of kopt's stateful optimizer classes, by name (no serialisation here).

Classes register themselves: every `Optimizer` subclass defined in kopt with a
`factory` (`class Adam(Optimizer, factory=...)`) is in `ALL_OPTIMIZERS`, the names `get`
and `deserialize` accept; the wrappers register as `config_only` (rebuilt from configs,
never from a bare name) or `internal` (found by code, such as `Optimizer.from_transform`).
This module imports nothing of kopt, so any module may import it.
"""

from __future__ import annotations

__all__ = ["ALL_OPTIMIZERS", "CONFIG_ONLY", "lookup", "lookup_config", "register", "wrapper"]

ALL_OPTIMIZERS: dict[str, type] = {}
"""kopt's optimizers by lower-case class name: what `get('adam')` builds."""

CONFIG_ONLY: dict[str, type] = {}
"""Wrappers that `deserialize` rebuilds but `get('name')` cannot (they need arguments)."""

_INTERNAL: dict[str, type] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def register(cls: type, kind: str = "optimizer") -> type:
    """Add `cls` under its lower-case name; `kind` is 'optimizer', 'config_only' or
    'internal'. Returns `cls`."""
    table = {"optimizer": ALL_OPTIMIZERS, "config_only": CONFIG_ONLY, "internal": _INTERNAL}
    if kind not in table:
        raise ValueError(
            f"register: `kind` must be one of {sorted(table)}. Received: kind={kind!r}")
    table[kind][_key(cls.__name__)] = cls
    return cls


def lookup(name: str) -> type:
    """The optimizer class named `name` (case-insensitive, underscores ignored)."""
    cls = ALL_OPTIMIZERS.get(_key(name))
    if cls is None:
        raise ValueError(
            f"Unknown optimizer identifier {name!r}. Valid names (case-insensitive): "
            f"{sorted(ALL_OPTIMIZERS)}"
        )
    return cls


def lookup_config(name: str) -> type:
    """The class a config's `class_name` names: a wrapper or an optimizer."""
    return CONFIG_ONLY.get(_key(name)) or lookup(name)


def wrapper(name: str) -> type:
    """A class registered as 'config_only' or 'internal' (e.g. 'TransformOptimizer')."""
    return CONFIG_ONLY.get(_key(name)) or _INTERNAL[_key(name)]
