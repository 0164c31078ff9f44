"""Private helpers shared by the schedules: argument checks, step arithmetic, nesting.

Checks raise `ValueError` naming the argument and the value received, in Keras's form
("Argument `decay_steps` must be > 0. Received: decay_steps=0").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax.numpy as jnp

from kopt.schedules.base import LearningRateSchedule, _short, deserialize, serialize


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _fail(name, value, what):
    raise ValueError(f"Argument `{name}` must be {what}. Received: {name}={_short(value)}")


def check_positive(name, value) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        _fail(name, value, "a finite number > 0")


def check_nonnegative(name, value) -> None:
    if not (_is_real(value) and math.isfinite(value) and value >= 0):
        _fail(name, value, "a finite number >= 0")


def check_unit_interval(name, value) -> None:
    if not (_is_real(value) and 0 <= value <= 1):
        _fail(name, value, "a number in [0, 1]")


def check_steps(name, value, *, positive=False) -> None:
    """An integer step count, >= 0 (or > 0 with `positive`)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (value > 0 if positive else value >= 0)):
        _fail(name, value, "an integer > 0" if positive else "an integer >= 0")


def check_choice(name, value, choices) -> None:
    if value not in choices:
        _fail(name, value, f"one of {list(choices)}")


def check_boundaries(name, boundaries, n, *, integer=False) -> list:
    """A list of `n` strictly increasing numbers (non-negative integers with `integer`)."""
    if not isinstance(boundaries, Sequence) or isinstance(boundaries, str):
        _fail(name, boundaries, "a list of numbers")
    if len(boundaries) != n:
        raise ValueError(
            f"Argument `{name}` must have {n} entries, one fewer than the number of "
            f"{'schedules' if integer else 'values'}. Received: {name}={_short(list(boundaries))} "
            f"of length {len(boundaries)}."
        )
    for b in boundaries:
        if integer:
            if not (isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 0):
                _fail(name, boundaries, "a list of integers >= 0")
        elif not (_is_real(b) and math.isfinite(b)):
            _fail(name, boundaries, "a list of finite numbers")
    if any(a >= b for a, b in zip(boundaries[:-1], boundaries[1:])):
        _fail(name, boundaries, "strictly increasing")
    return [int(b) for b in boundaries] if integer else list(boundaries)


def check_rate_or_schedule(name, value) -> None:
    """A `LearningRateSchedule`, or a number >= 0 (a constant rate)."""
    if isinstance(value, LearningRateSchedule):
        return
    if not (_is_real(value) and math.isfinite(value) and value >= 0):
        _fail(name, value,
              "a kopt.schedules.LearningRateSchedule or a number >= 0 (to wrap a plain "
              "function, subclass LearningRateSchedule so it can be serialised)")


# ----------------------------------------------------------------------------- arithmetic


def f32(x):
    """`x` as float32 (steps are cast as Keras casts them: exact up to 2**24)."""
    return jnp.asarray(x, jnp.float32)


def floor_div(t, d):
    """`floor(t / d)` for float32 `t` and a number `d`, on the right side of exact multiples.

    XLA may divide by a constant as a multiplication by its reciprocal, so `t / d` can land
    one ulp below an exact integer (90 / 30 -> 2.9999998) and a staircase or a cycle would
    switch a step late. The products `q * d` are exact for whole steps below 2**24.
    """
    q = jnp.floor(t / d)
    q = jnp.where(q * d > t, q - 1, q)
    return jnp.where((q + 1) * d <= t, q + 1, q)


def shift(step, offset: int):
    """`max(step - offset, 0)`, in the step's own dtype when it is an integer."""
    step = jnp.asarray(step)
    if not jnp.issubdtype(step.dtype, jnp.integer):
        step = f32(step)
    return jnp.maximum(step, offset) - offset


def evaluate(rate, step):
    """A nested schedule's value at `step`, or a constant rate, as float32 of step's shape."""
    if isinstance(rate, LearningRateSchedule):
        return f32(rate(step))
    return jnp.full(jnp.shape(step), rate, jnp.float32)


def nested_config(rate):
    """A nested schedule as `serialize` gives it; a constant rate as itself."""
    return serialize(rate) if isinstance(rate, LearningRateSchedule) else rate


def nested_from_config(config):
    return deserialize(config) if isinstance(config, dict) else config
