"""Stateful constructors derived from the functional factories' signatures.

A stateful optimizer is its docstring and its factory:

    class Adam(Optimizer, factory=functional.adam):
        '''...'''

gets an `__init__` whose signature is Keras's (`inspect.signature(Adam)` lists every
argument with the factory's default): the factory's own hyperparameters in the factory's
order (`weight_decay` where the factory puts it), then Keras's cross-cutting arguments in
Keras's order, `name`, kopt's extras (`bucket_threshold`, `state_dtype`,
`min_quantized_size`, as the factory has them) and `**kwargs` (Keras's legacy `decay` and
`lr`, handled by `Optimizer.__init__`). The factory's per-variable masks
(`weight_decay_mask`, ...) are not constructor arguments: the facade computes them at
build.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable

__all__ = ["COMMON_ARGS", "constructor_signature", "derived_doc", "derived_init",
           "hyper_names"]

COMMON_ARGS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
               "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
               "gradient_accumulation_steps")
"""The cross-cutting arguments `Optimizer.__init__` takes by name (Keras's order)."""

_KERAS_TAIL = COMMON_ARGS[1:]   # weight_decay stays where the factory puts it (AdamW: 2nd)
_EXTRAS = ("bucket_threshold", "state_dtype", "min_quantized_size")
_P = inspect.Parameter


def _factory_params(factory: Callable) -> dict[str, inspect.Parameter]:
    params = {p.name: p for p in inspect.signature(factory).parameters.values()
              if not p.name.endswith("_mask")}
    bad = [p.name for p in params.values() if p.default is _P.empty
           or p.kind not in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)]
    if bad or "learning_rate" not in params:
        raise TypeError(
            f"{getattr(factory, '__name__', factory)!r} cannot derive a stateful "
            "constructor: every argument needs a default, and `learning_rate` must be one. "
            f"Received arguments without one: {bad}")
    return params


def hyper_names(factory: Callable) -> tuple[str, ...]:
    """The factory's arguments the facade keeps in `_hyper` (and in `get_config`):
    all but `learning_rate`, the cross-cutting ones, `bucket_threshold` and the masks."""
    skip = {"learning_rate", "bucket_threshold", *COMMON_ARGS}
    return tuple(n for n in _factory_params(factory) if n not in skip)


def constructor_signature(factory: Callable) -> inspect.Signature:
    """The Keras-order constructor signature (with `self`) derived from `factory`."""
    params = _factory_params(factory)
    tail = set(_KERAS_TAIL) | set(_EXTRAS)
    order = [n for n in params if n not in tail]
    order += [n for n in _KERAS_TAIL if n in params]
    out = [_P("self", _P.POSITIONAL_OR_KEYWORD)]
    out += [params[n].replace(kind=_P.POSITIONAL_OR_KEYWORD, annotation=_P.empty)
            for n in order]
    out.append(_P("name", _P.POSITIONAL_OR_KEYWORD, default=None))
    out += [params[n].replace(kind=_P.POSITIONAL_OR_KEYWORD, annotation=_P.empty)
            for n in _EXTRAS if n in params]
    out.append(_P("kwargs", _P.VAR_KEYWORD))
    return inspect.Signature(out)


def derived_init(cls: type, factory: Callable) -> Callable:
    """An `__init__` for `cls` with `constructor_signature(factory)`, that passes the
    factory's hyperparameters as `hyper` and the rest by name to the base class."""
    signature = constructor_signature(factory)
    hyper = hyper_names(factory)

    def __init__(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs)
        arguments.apply_defaults()
        given = dict(arguments.arguments)
        del given["self"]
        extra = given.pop("kwargs")
        super(cls, self).__init__(hyper={n: given.pop(n) for n in hyper}, **given, **extra)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    return __init__


_EXAMPLE = """Example:
  >>> import jax, jax.numpy as jnp, kopt
  >>> w = kopt.Variable(jnp.ones((3,)), name="w")
  >>> opt = kopt.optimizers.{name}()
  >>> grads = jax.grad(lambda x: jnp.sum(x ** 2))(w.value)
  >>> int(opt.apply_gradients([(grads, w)]))
  1"""


def derived_doc(cls: type, factory: Callable) -> str:
    """`cls`'s docstring, completed: after its first paragraph, where the maths and the
    arguments are documented (and the `state_dtype` note when the factory takes it);
    at the end, a standard example unless the docstring has one."""
    doc = inspect.cleandoc(cls.__doc__ or cls.__name__)
    head, _, rest = doc.partition("\n\n")
    about = (f"The update rule, arguments and defaults are those of "
             f"`kopt.functional.{factory.__name__}` (whose docstring gives the maths); the "
             "rest is the `kopt.optimizers.Optimizer` facade.")
    if "state_dtype" in inspect.signature(factory).parameters:
        about += (" `state_dtype` ('bfloat16' or 'int8') stores the state in 2 or about 1 "
                  "byte per element; see `kopt.functional.sgd` and `get_weights` for the "
                  "layout.")
    parts = [head, textwrap.fill(about, 88), rest]
    if "Example:" not in doc:
        parts.append(_EXAMPLE.format(name=cls.__name__))
    return "\n\n".join(p for p in parts if p) + "\n"
