"""Keras 3's cross-cutting optimizer options, declared once.

Every kopt factory accepts the same keyword arguments besides its own hyperparameters
(SPEC §1: Keras's `clipnorm`, `weight_decay`, `use_ema`, ... plus kopt's
`bucket_threshold`, `state_dtype` and `min_quantized_size`). They are the fields of
`Options`, a frozen dataclass that validates them on construction, and `with_options`
adds them to a factory's signature as keyword-only arguments and hands the factory one
`Options`. A new option is a new field here, its check in `Options.__post_init__`, and
its use in `kopt.functional.keras_order` (or the rule runner).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.clipping import validate_clip_options
from kopt.functional.quantize import MIN_QUANTIZED_SIZE, validate_state_dtype
from kopt.functional.validation import (
    check_int,
    is_traced,
    validate_accumulation,
    validate_ema,
    validate_loss_scale_factor,
)
from kopt.functional.weight_decay import validate_weight_decay

__all__ = ["Options", "with_options", "OPTION_NAMES"]


@dataclasses.dataclass(frozen=True, eq=False)
class Options:
    """The cross-cutting options, as Keras 3 applies them (see `kopt.functional.sgd`
    for the order of operations). Values may be jax arrays (optax.inject_hyperparams)
    except the layout options `bucket_threshold` and `min_quantized_size`."""

    weight_decay: float | None = None
    """Decoupled decay `theta -= theta * weight_decay * lr`, after the rule. None: off."""
    weight_decay_mask: Any = None
    """Pytree of bools (or callable `params -> pytree`) choosing the leaves that decay.
    None: all."""
    clipnorm: float | None = None
    """Clip each gradient tensor to this norm. 0 and inf: no clipping."""
    clipvalue: float | None = None
    """Clip each gradient element to [-clipvalue, clipvalue]."""
    global_clipnorm: float | None = None
    """Clip all gradients together to this global norm. At most one clip option."""
    bucket_threshold: int | None = DEFAULT_BUCKET_THRESHOLD
    """Leaves with at most this many elements share flat state buffers; 0 turns bucketing
    off; None: automatic (see `kopt.functional.buckets`)."""
    use_ema: bool = False
    """Keep `ema`, Keras's moving average of the params after each step (needs params)."""
    ema_momentum: float = 0.99
    """The EMA's momentum, in [0, 1] (0 on the first update)."""
    ema_overwrite_frequency: int | None = None
    """Every that many updates the returned updates move the params onto the EMA."""
    loss_scale_factor: float | None = None
    """The gradients are divided by it before anything else."""
    gradient_accumulation_steps: int | None = None
    """int >= 2: apply the step to the mean gradient of that many calls."""
    state_dtype: str | None = None
    """Storage of the per-parameter state: None (the param's dtype, at least float32),
    'float32', 'bfloat16' or 'int8' (see `kopt.functional.quantize`)."""
    min_quantized_size: int = MIN_QUANTIZED_SIZE
    """The smallest leaf, in elements, whose state 'int8' quantises."""

    def __post_init__(self):
        validate_clip_options(self.clipnorm, self.clipvalue, self.global_clipnorm)
        validate_weight_decay(self.weight_decay)
        self._set("bucket_threshold", check_int(
            "bucket_threshold", self.bucket_threshold, low=0, allow_none=True,
            message="`bucket_threshold` must be an int >= 0 (0 turns bucketing off)."))
        validate_loss_scale_factor(self.loss_scale_factor)
        validate_ema(self.use_ema, self.ema_momentum, self.ema_overwrite_frequency)
        validate_accumulation(self.gradient_accumulation_steps)
        steps = self.gradient_accumulation_steps
        if steps is not None and not is_traced(steps):
            self._set("gradient_accumulation_steps", int(steps))
        size = check_int("min_quantized_size", self.min_quantized_size, low=1,
                         message="`min_quantized_size` must be an int >= 1.")
        self._set("min_quantized_size", size)
        self._set("state_dtype", validate_state_dtype(
            self.state_dtype, MIN_QUANTIZED_SIZE if is_traced(size) else size))

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def replace(self, **changes) -> Options:
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)

    def __repr__(self):
        changed = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                            for f in dataclasses.fields(self)
                            if getattr(self, f.name) is not f.default)
        return f"Options({changed})"


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Options))


def with_options(factory=None, *, exclude: tuple[str, ...] = ()):
    """Add the `Options` fields to `factory`'s signature as keyword-only arguments.

    `factory` declares its own arguments and a keyword `options`; the decorated function
    takes its own arguments plus every option (but those in `exclude`) by keyword, with
    `Options`' defaults, and calls `factory(..., options=Options(...))`. An option the
    factory declares itself (AdamW's positional `weight_decay`) keeps its place and
    default, and is passed both to the factory and in `options`. `inspect.signature`
    of the result lists every argument with its default.
    """
    if factory is None:
        return functools.partial(with_options, exclude=exclude)
    sig = inspect.signature(factory)
    own = [p for p in sig.parameters.values() if p.name != "options"]
    own_names = tuple(p.name for p in own)
    fields = {f.name: f for f in dataclasses.fields(Options)}
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                          annotation=f.type)
        for name, f in fields.items() if name not in own_names and name not in exclude
    ]
    public = sig.replace(parameters=own + added)
    passed = tuple(n for n in OPTION_NAMES if n in public.parameters)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            bound = public.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{factory.__name__}() {e}") from None
        bound.apply_defaults()
        values = bound.arguments
        options = Options(**{n: values[n] for n in passed})
        return factory(**{n: values[n] for n in own_names}, options=options)

    wrapper.__signature__ = public
    return wrapper
