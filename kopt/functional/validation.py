"""Argument checks shared by the optimizers; messages name the argument and the value."""

from __future__ import annotations

__all__ = [
    "check_unit_interval", "check_positive", "check_nonnegative", "validate_loss_scale_factor",
    "validate_ema", "validate_accumulation",
]


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


def validate_loss_scale_factor(value) -> None:
    """`loss_scale_factor` is None or a number > 0 (gradients are divided by it)."""
    if value is not None:
        check_positive("loss_scale_factor", value)


def validate_ema(use_ema, ema_momentum, ema_overwrite_frequency) -> None:
    """Keras 3's checks, made only when `use_ema` is on."""
    if not use_ema:
        return
    if not _is_number(ema_momentum) or not 0 <= ema_momentum <= 1:
        raise ValueError(
            f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={ema_momentum!r}"
        )
    if ema_overwrite_frequency is not None and (
        isinstance(ema_overwrite_frequency, bool)
        or not isinstance(ema_overwrite_frequency, int)
        or ema_overwrite_frequency < 1
    ):
        raise ValueError(
            "`ema_overwrite_frequency` must be an integer >= 1 or None. Received: "
            f"ema_overwrite_frequency={ema_overwrite_frequency!r}"
        )


def validate_accumulation(steps) -> None:
    """`gradient_accumulation_steps` is None or an int >= 2, as Keras 3."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 2. Received: "
            f"gradient_accumulation_steps={steps!r}"
        )
