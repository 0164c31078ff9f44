"""The fields every optimizer state shares, declared once.

An optimizer's state is a NamedTuple whose fields are, in this order:

- `count`, `learning_rate`: the head, shared by all (below);
- the optimizer's own fields: its slots and any scalar it keeps (Nadam's
  `momentum_cache`), declared in its module;
- `seed`, for optimizers that take `state_dtype` (stochastic rounding of low-precision
  state), then `ema`, `accum`, `micro_step`: the tail of the cross-cutting options, all
  None unless their option is on.

`optimizer_state` builds that NamedTuple from a class that declares only the optimizer's
own fields::

    @optimizer_state
    class AdamState(NamedTuple):
        m: Packed                    # first moment, like params
        v: Packed                    # second moment, like params
        vhat: Packed | None = None   # running max of v, like params; None unless amsgrad

The result is the same kind of class a full `class AdamState(NamedTuple)` statement makes
(same module, name, field order, defaults and annotations), so pickles and checkpoints do
not see the difference. Other class attributes (Ftrl's `weights_by_variable`) are kept.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax

from kopt.functional.buckets import Packed

__all__ = ["HEAD", "SEED", "TAIL", "optimizer_state"]

HEAD: tuple[tuple[str, Any], ...] = (
    ("count", jax.Array),           # shape=(), int32: updates applied
    ("learning_rate", jax.Array),   # shape=(), float32: rate of the next update
)
"""The leading fields of every state, with their types (no defaults)."""

SEED: tuple[tuple[str, Any], ...] = (
    ("seed", jax.Array | None),     # uint32 stochastic-rounding seed (16/8-bit state)
)
"""The field of states whose factory takes `state_dtype` (default None)."""

TAIL: tuple[tuple[str, Any], ...] = (
    ("ema", Packed | None),          # EMA of the params (use_ema), like params
    ("accum", Packed | None),        # gradient sum (gradient_accumulation_steps)
    ("micro_step", jax.Array | None),   # int32 raw calls (gradient_accumulation_steps)
)
"""The trailing fields of every state, for EMA and accumulation (default None)."""

_T = TypeVar("_T")


def _own_attributes(cls: type) -> dict[str, Any]:
    """`cls`'s public class attributes that are not fields (Ftrl's `weights_by_variable`);
    the NamedTuple machinery is all underscored."""
    return {k: v for k, v in vars(cls).items() if k not in cls._fields and not k.startswith("_")}


def _build(cls: type, seed: bool) -> type:
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise TypeError("optimizer_state decorates a `class <Name>State(NamedTuple)` that "
                        f"declares the optimizer's own fields. Received: {cls!r}")
    shared = {name for name, _ in (*HEAD, *SEED, *TAIL)}
    clash = sorted(shared & set(cls._fields))
    if clash:
        raise TypeError(f"{cls.__name__} declares the shared field(s) {clash}, which "
                        "optimizer_state adds itself: declare only the optimizer's own fields.")
    own = [(name, cls.__annotations__.get(name, Any)) for name in cls._fields]
    fields = [*HEAD, *own, *(SEED if seed else ()), *TAIL]
    defaults = {**cls._field_defaults, **{name: None for name, _ in (*SEED, *TAIL)}}
    doc = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(") else None

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__,
                         __annotations__=dict(fields))
        namespace.update({name: defaults[name] for name, _ in fields if name in defaults})
        namespace.update(_own_attributes(cls))
        if doc is not None:
            namespace["__doc__"] = doc

    return types.new_class(cls.__name__, (NamedTuple,), exec_body=body)


def optimizer_state(cls: type[_T] | None = None, *, seed: bool = True
                    ) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """The optimizer's state class: `HEAD`, `cls`'s fields, then `SEED` (unless
    `seed=False`, for factories without `state_dtype`) and `TAIL`.

    Use as `@optimizer_state` or `@optimizer_state(seed=False)` on a
    `class <Name>State(NamedTuple)` that declares only the optimizer's own fields.
    """
    if cls is None:
        return lambda c: _build(c, seed)
    return _build(cls, seed)
