"""The schedule protocol shared by both layers, and its (de)serialisation."""

from __future__ import annotations

import functools
import inspect
import reprlib
import threading
from typing import Any

import jax
import numpy as np

__all__ = ["LearningRateSchedule", "serialize", "deserialize", "register"]

_REGISTRY: dict[str, type[LearningRateSchedule]] = {}

# Schedules nested deeper than this in a config are refused. Real configs nest two or
# three levels; the bound keeps a hostile config from costing work exponential in its
# depth (a `LinearWarmup` evaluates its inner schedule twice, at 0 and at the step).
MAX_NESTING = 10
_depth = threading.local()


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxstring = 3, 8, 8, 80


def _short(x) -> str:
    """A bounded repr: a config may be nested thousands deep."""
    return _repr.repr(x)


def _plain(x):
    """A numpy or concrete jax scalar (or 0-d array) as a Python int or float; lists and
    tuples element by element; anything else unchanged. So a schedule accepts what
    `opt.learning_rate` returns (a 0-d numpy array) and its config stays JSON-friendly."""
    if isinstance(x, (list, tuple)):   # one level: boundaries and values
        return type(x)(_plain_scalar(v) for v in x)
    return _plain_scalar(x)


def _plain_scalar(x):
    if isinstance(x, (np.ndarray, np.generic, jax.Array)) and not isinstance(
            x, (bool, jax.core.Tracer)) and getattr(x, "shape", None) == ():
        dtype = np.dtype(x.dtype)
        if np.issubdtype(dtype, np.bool_):
            return bool(x)
        if np.issubdtype(dtype, np.integer):
            return int(x)
        if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
            return float(x)
    return x


def _plain_arguments(init):
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        return init(self, *(_plain(a) for a in args),
                    **{k: _plain(v) for k, v in kwargs.items()})
    wrapper._kopt_plain = True
    return wrapper


def register(cls: type[LearningRateSchedule]) -> type[LearningRateSchedule]:
    """Class decorator: make a schedule known to `deserialize` by its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class LearningRateSchedule:
    """A pure callable `schedule(step) -> learning_rate`.

    `step` is the number of updates applied so far (Keras's `iterations` before it is
    incremented). Subclasses compute with `jax.numpy` only, so a schedule works under
    `jit` and `vmap`, and implement `get_config`; `from_config` calls the constructor.

    Every subclass's constructor receives numpy and concrete jax scalars (and 0-d arrays,
    such as `opt.learning_rate`) as Python numbers, so `get_config` returns plain ints
    and floats.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_kopt_plain", False):
            cls.__init__ = _plain_arguments(init)

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        return cls(**cls._checked_config(config))

    @classmethod
    def _checked_config(cls, config) -> dict[str, Any]:
        """A copy of `config`, checked against the constructor: a dict whose keys are
        its arguments, with every required one present (errors name the key)."""
        if not isinstance(config, dict):
            raise TypeError(
                f"{cls.__name__}.from_config expects a dict of constructor arguments. "
                f"Received: config={_short(config)} of type {type(config).__name__}")
        params = inspect.signature(cls.__init__).parameters
        names = [n for n in params if n != "self"]
        bad = [k for k in config if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{cls.__name__} config keys must be strings. Received: {bad!r}")
        unknown = [k for k in config if k not in names]
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} in the config of {cls.__name__}; its arguments "
                f"are {names}. Received: config={_short(config)}")
        missing = [n for n, p in params.items() if n != "self" and p.default is p.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in config]
        if missing:
            raise ValueError(
                f"The config of {cls.__name__} lacks the required key(s) {missing}. "
                f"Received: config={_short(config)}")
        return dict(config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """`{'class_name': ..., 'config': ...}`, the form Keras uses inside optimizer configs."""
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "serialize() expects a kopt LearningRateSchedule. "
            f"Received: {schedule!r} of type {type(schedule).__name__}"
        )
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


_OUTER_KEYS = ("class_name", "config", "module", "registered_name")


def deserialize(config: dict[str, Any]) -> LearningRateSchedule:
    """Inverse of `serialize`. Also accepts Keras's `module`/`registered_name` keys.

    A config is untrusted input: only schedules registered with kopt (by their bare class
    name) are built, nothing is imported, and nesting deeper than `MAX_NESTING` is refused.
    Malformed input raises ValueError or TypeError naming the offending key.
    """
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(
            "A schedule config must be a dict with keys 'class_name' and 'config'. "
            f"Received: {_short(config)}"
        )
    unknown = [k for k in config if k not in _OUTER_KEYS]
    if unknown:
        raise ValueError(
            f"Unknown key(s) {unknown!r} in a schedule config; the keys are 'class_name', "
            f"'config' and Keras's optional 'module' and 'registered_name'. Received: {_short(config)}")
    name = config["class_name"]
    if not isinstance(name, str):
        raise TypeError(
            "The 'class_name' of a schedule config must be a string naming a kopt schedule. "
            f"Received: class_name={_short(name)} of type {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown learning-rate schedule {name!r} (key 'class_name'); only kopt's "
            f"registered schedules are built. Known schedules: {sorted(_REGISTRY)}"
        )
    inner = config["config"]
    if not isinstance(inner, dict):
        raise TypeError(
            f"The 'config' of a {name} schedule config must be a dict of its arguments. "
            f"Received: config={_short(inner)} of type {type(inner).__name__}")
    depth = getattr(_depth, "value", 0)
    if depth >= MAX_NESTING:
        raise ValueError(
            f"Schedule config nested more than {MAX_NESTING} levels deep (at class_name="
            f"{name!r}); refusing it.")
    _depth.value = depth + 1
    try:
        return _REGISTRY[name].from_config(dict(inner))
    finally:
        _depth.value = depth

