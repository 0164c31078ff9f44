"""How a learning rate lives in functional state.

A learning rate is one of:

- a number: a Python float or int, a numpy scalar or 0-d numpy array (what
  `opt.learning_rate` returns). It is stored as a float32 scalar in the state's
  `learning_rate` field and read back on every update, so replacing it
  (`set_learning_rate`) never recompiles;
- a schedule, or any callable `step -> lr` (one required positional argument). It is
  evaluated at the step count before it is incremented (as Keras does);
- a zero-argument callable `() -> lr` (Keras's documented form,
  `SGD(learning_rate=lambda: 0.1)`), evaluated, traced, on every update;
- a jax array (0-d), as `optax.inject_hyperparams` passes it: the transform is rebuilt on
  every step with the current value, so that value is used as given. To store the rate
  in the state instead, pass a Python float or a numpy scalar.

With a callable or a jax array, the state's field holds the rate the next update will use,
for reading only; `set_learning_rate` refuses such a state. The state records this in its
type, not in a field: its class is a subclass of the optimizer's state class (same fields,
same `get_weights` layout), marked `kopt_learning_rate = 'schedule'` or `'array'`.

A callable's output must be a scalar; a vector is refused when the update is traced.
NaN cannot be seen inside `jit`; the stateful layer checks it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp

from kopt.functional.validation import TRACED, ArgumentTypeError, check_number, concrete

__all__ = [
    "LearningRate", "as_learning_rate", "learning_rate_arity", "resolve_learning_rate",
    "learning_rate_source",
]

LearningRate = Union[float, Callable[[Any], Any]]

# Keras 3's message for a learning rate of the wrong type (it raises ValueError).
_KERAS_TYPE_MESSAGE = (
    "Argument `learning_rate` should be float, or an instance of LearningRateSchedule, or "
    "a callable (that takes in the current iteration value and returns the corresponding "
    "learning rate value)."
)


def learning_rate_arity(fn: Callable) -> int:
    """How a callable learning rate is called: 0 (`fn()`, Keras's form) or 1
    (`fn(step)`, a schedule). Raises ValueError naming `learning_rate` for a callable
    that needs two or more arguments, or keyword-only ones."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):   # a builtin or C callable: assume `step -> lr`
        return 1
    required, kw_only = [], []
    for p in sig.parameters.values():
        if p.default is not p.empty:
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            required.append(p.name)
        elif p.kind is p.KEYWORD_ONLY:
            kw_only.append(p.name)
    if kw_only or len(required) > 1:
        raise ValueError(
            "A callable `learning_rate` must take no argument (`lambda: 0.1`, Keras's form) "
            "or one, the step count (a schedule). This one requires "
            f"{required + kw_only}. Received: learning_rate={fn!r}"
        )
    return len(required)


def resolve_learning_rate(learning_rate):
    """Validate a learning rate and return `(value, arity)`.

    `value` is a Python float for a concrete number (Python, numpy or jax scalar), the
    callable itself for a callable (`arity` 0 or 1, see `learning_rate_arity`), or the
    jax array for a traced one (`arity` None, as for numbers). Raises ValueError naming
    `learning_rate` for NaN, infinity, a negative value or a callable of the wrong arity,
    and `ArgumentTypeError` (a TypeError and a ValueError, with Keras's message) for
    anything else. The stateful layer uses it for its constructor and setter.
    """
    if callable(learning_rate) and not isinstance(learning_rate, jax.Array):
        return learning_rate, learning_rate_arity(learning_rate)
    v = concrete(learning_rate)
    if v is None:
        raise ArgumentTypeError(
            f"{_KERAS_TYPE_MESSAGE} kopt takes a number (Python, numpy or 0-d jax), a "
            f"schedule or a callable. Received instead: learning_rate={learning_rate!r}"
        )
    if v is TRACED:
        return learning_rate, None
    check_number("learning_rate", v, low=0,
                 message="`learning_rate` must be a number >= 0.")
    return float(v), None


def learning_rate_source(state) -> str | None:
    """'schedule' or 'array' where the state's rate comes from the transform on every
    update (a callable, or a jax array as `optax.inject_hyperparams` passes it); None for
    a rate stored in the state."""
    return getattr(type(state), "kopt_learning_rate", None)


_MARKED: dict[tuple[type, str], type] = {}


def _rebuild(base: type, source: str, values: tuple):
    return _marked_type(base, source)(*values)


def _marked_type(base: type, source: str) -> type:
    key = (base, source)
    if key not in _MARKED:
        def __reduce__(self):
            return _rebuild, (base, source, tuple(self))

        _MARKED[key] = type(base.__name__, (base,), {
            "__slots__": (), "__reduce__": __reduce__, "kopt_learning_rate": source,
            "__module__": base.__module__, "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        })
    return _MARKED[key]


class _Rate:
    def __init__(self, learning_rate):
        value, arity = resolve_learning_rate(learning_rate)
        self.arity = arity
        self.schedule = value if arity is not None else None
        self.array = value if arity is None and not isinstance(value, float) else None
        if self.array is None and isinstance(learning_rate, jax.Array):
            self.array = learning_rate   # concrete jax array: used as given, every step
        self.constant = value if isinstance(value, float) and self.array is None else None

    @property
    def source(self) -> str | None:
        if self.schedule is not None:
            return "schedule"
        if self.array is not None:
            return "array"
        return None

    def mark(self, state):
        """`state`, as an instance of the marked subclass of its class when the rate
        comes from the transform (see the module docstring)."""
        if self.source is None or learning_rate_source(state) == self.source:
            return state
        base = type(state)
        while getattr(base, "kopt_learning_rate", None) is not None:
            base = base.__bases__[0]
        return _marked_type(base, self.source)(*state)

    def _evaluate(self, step):
        out = self.schedule() if self.arity == 0 else self.schedule(step)
        out = jnp.asarray(out)
        if out.shape != ():
            raise ValueError(
                "The learning-rate schedule must return a scalar; it returned an array of "
                f"shape {out.shape} at step {step}. Received: learning_rate={self.schedule!r}"
            )
        if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.integer)):
            raise ValueError(
                "The learning-rate schedule must return a real number; it returned dtype "
                f"{out.dtype}. Received: learning_rate={self.schedule!r}"
            )
        return out.astype(jnp.float32)

    def initial(self):
        if self.schedule is not None:
            return self._evaluate(jnp.zeros((), jnp.int32))
        if self.array is not None:
            return jnp.asarray(self.array).astype(jnp.float32)
        return jnp.asarray(self.constant, jnp.float32)

    def value(self, state, step=None):
        """The rate for the update at `step` (default `state.count`)."""
        if self.schedule is not None:
            return self._evaluate(state.count if step is None else step)
        if self.array is not None:
            return jnp.asarray(self.array).astype(jnp.float32)
        return state.learning_rate

    def next(self, state, new_count):
        """What to store in the state's `learning_rate` field after an update."""
        if self.schedule is not None:
            return self._evaluate(new_count)
        if self.array is not None:
            return jnp.asarray(self.array).astype(jnp.float32)
        return state.learning_rate


def as_learning_rate(learning_rate: LearningRate) -> _Rate:
    return _Rate(learning_rate)
