"""Argument checks shared by the optimizers; messages name the argument and the value."""

from __future__ import annotations

__all__ = ["check_unit_interval", "check_positive", "check_nonnegative"]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_unit_interval(name: str, value) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a float between [0, 1]. Received: {name}={value!r}")


def check_positive(name: str, value) -> None:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")


def check_nonnegative(name: str, value) -> None:
    if not _is_number(value) or not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
