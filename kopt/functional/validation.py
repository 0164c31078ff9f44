"""Argument checks shared by the optimizers; messages name the argument and the value.

One helper, `check_number`, drives every numeric check. It accepts what a user or a
wrapper may pass for a number:

- Python ints and floats (not bools);
- numpy scalars and 0-d numpy arrays (what `opt.learning_rate` returns);
- 0-d jax arrays, concrete or traced. `optax.inject_hyperparams` rebuilds the transform
  on every step with its hyperparameters as jax arrays, traced under `jit`.

Everything concrete is checked: NaN is always refused, infinity unless the argument says
it means something (`allow_inf`, e.g. `clipnorm=inf`: no clipping), then the range. A
traced value cannot be inspected inside `jit`; it is passed through unchecked (it was
checked when it was concrete, at `init`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

__all__ = [
    "ArgumentTypeError", "TRACED", "concrete", "check_number", "check_int", "is_traced",
    "maybe_nonzero", "check_unit_interval", "check_positive", "check_nonnegative",
    "validate_loss_scale_factor", "validate_ema", "validate_accumulation",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a TypeError (kopt's contract) and a ValueError
    (what Keras 3 raises for the same misuse), so code written against either catches it."""


class _Traced:
    def __repr__(self):
        return "TRACED"


TRACED = _Traced()   # `concrete` of a value that cannot be read inside a trace


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def concrete(x):
    """The Python number `x` stands for, `TRACED` for a traced jax value, or None when
    `x` is not a real scalar number (a bool, a string, a vector, a complex...)."""
    if isinstance(x, bool) or isinstance(x, np.bool_):
        return None
    if isinstance(x, (int, float)):
        return x
    if is_traced(x):
        return TRACED if getattr(x, "shape", None) == () else None
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        if getattr(x, "shape", None) != ():
            return None
        dtype = np.dtype(x.dtype)
        if np.issubdtype(dtype, np.integer):
            return int(x)
        if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
            return float(x)
    return None


def _fmt(value) -> str:
    v = concrete(value)
    return repr(value) if v is None or v is TRACED else repr(v)


def check_number(name: str, value, *, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, allow_inf: bool = False, allow_none: bool = False,
                 integer: bool = False, message: str | None = None):
    """Check a numeric argument; return it unchanged (or None).

    `low`/`high` bound it (inclusive unless `low_open`/`high_open`). `message` replaces
    the default range sentence (e.g. Keras's wording); the error always ends with
    `Received: name=value`.
    """
    if value is None and allow_none:
        return None
    v = concrete(value)
    kind = "an integer" if integer else "a number"
    if v is None or (integer and v is not TRACED and not isinstance(v, int)):
        raise ValueError(
            (message + " " if message else "")
            + f"`{name}` must be {kind}{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}")
    if v is TRACED:
        return value
    if math.isnan(v):
        raise ValueError(f"`{name}` must not be NaN. Received: {name}={v!r}")
    if math.isinf(v) and not allow_inf:
        raise ValueError(f"`{name}` must be finite. Received: {name}={v!r}")
    bad = ((low is not None and (v <= low if low_open else v < low))
           or (high is not None and (v >= high if high_open else v > high)))
    if bad:
        if message is None:
            parts = []
            if low is not None:
                parts.append(f"{'>' if low_open else '>='} {low}")
            if high is not None:
                parts.append(f"{'<' if high_open else '<='} {high}")
            message = f"`{name}` must be {kind} {' and '.join(parts)}."
        raise ValueError(f"{message} Received: {name}={v!r}")
    return value


def check_int(name: str, value, *, low=None, allow_none: bool = False,
              message: str | None = None):
    """An integer argument (Python int, numpy or jax integer scalar); returns it as a
    Python int when concrete, unchanged when traced, None when None is allowed."""
    value = check_number(name, value, low=low, allow_none=allow_none, integer=True,
                         message=message)
    v = concrete(value)
    return value if v is None or v is TRACED else int(v)


def maybe_nonzero(x) -> bool:
    """`bool(x)` where `x` can be read; True for a traced value (the general path,
    which must then compute the right result for a zero too)."""
    if x is None:
        return False
    v = concrete(x)
    if v is TRACED:
        return True
    return bool(v if v is not None else x)


def check_unit_interval(name: str, value) -> None:
    check_number(name, value, low=0.0, high=1.0,
                 message=f"`{name}` must be a float between [0, 1].")


def check_positive(name: str, value) -> None:
    check_number(name, value, low=0, low_open=True, message=f"`{name}` must be a number > 0.")


def check_nonnegative(name: str, value) -> None:
    check_number(name, value, low=0, message=f"`{name}` must be a number >= 0.")


def validate_loss_scale_factor(value) -> None:
    """`loss_scale_factor` is None or a finite number > 0 (gradients are divided by it)."""
    if value is not None:
        check_positive("loss_scale_factor", value)


def validate_ema(use_ema, ema_momentum, ema_overwrite_frequency) -> None:
    """Keras 3's checks (its messages), made only when `use_ema` is on; NaN and inf are
    refused whatever `use_ema` says."""
    check_number("ema_momentum", ema_momentum, allow_none=not use_ema)
    if not use_ema:
        check_int("ema_overwrite_frequency", ema_overwrite_frequency, allow_none=True)
        return
    check_number("ema_momentum", ema_momentum, low=0, high=1,
                 message="`ema_momentum` must be in the range [0, 1].")
    check_int("ema_overwrite_frequency", ema_overwrite_frequency, low=1, allow_none=True,
              message="`ema_overwrite_frequency` must be an integer >= 1 or None.")


def validate_accumulation(steps) -> None:
    """`gradient_accumulation_steps` is None or an int >= 2, as Keras 3."""
    check_int("gradient_accumulation_steps", steps, low=2, allow_none=True,
              message="`gradient_accumulation_steps` must be an integer >= 2.")
