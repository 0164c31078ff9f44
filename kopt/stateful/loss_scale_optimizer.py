"""Stateful `LossScaleOptimizer`, a thin shell over `kopt.functional.nonfinite.dynamic_loss_scale`."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.base import apply_updates
from kopt.functional.buckets import state_dtype_for
from kopt.functional.nonfinite import LossScaleState, _check_scale_arguments, dynamic_loss_scale
from kopt.stateful import multihost, registry
from kopt.stateful.multi_optimizer import MultiOptimizer
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.optimizer_variable import OptimizerVariable
from kopt.stateful.serialization import check_config_tree, deserialize, serialize
from kopt.stateful.variable import LOCK
from kopt.stateful.wrapper import Wrapper

__all__ = ["LossScaleOptimizer"]

# What pickling leaves out: the compiled step and what is rebuilt from the inner optimizer.
_NOT_PICKLED = ("_transform", "_inner_tx", "_step", "_minimize_cache", "_index",
                "_iterations_var", "_plain_key")

# Keras 3 still accepts these base-optimizer arguments from old configs, at their defaults.
_BASE_DEFAULTS = {
    "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
    "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
    "loss_scale_factor": None, "gradient_accumulation_steps": None,
}


class LossScaleOptimizer(Wrapper):
    r"""Dynamic loss scaling around another optimizer, as `keras.optimizers.LossScaleOptimizer`.

    Multiply the loss by the scale (`opt.scale_loss(loss)`) before differentiating, so
    that small float16 gradients do not underflow, and pass the scaled gradients to
    `apply_gradients`. In one compiled step, with scale :math:`s` and step counter :math:`k`:

    - if every gradient is finite, the inner optimizer applies :math:`g / s`; then
      :math:`s \leftarrow 2s, k \leftarrow 0` if :math:`k = \text{dynamic\_growth\_steps} - 1`,
      else :math:`k \leftarrow k + 1`;
    - otherwise nothing is applied (the variables and the inner optimizer's state are
      unchanged) and :math:`s \leftarrow s / 2, k \leftarrow 0`.

    The maths is `kopt.functional.nonfinite.dynamic_loss_scale(inner.transform, ...)`.
    The inner optimizer keeps its own state and is updated in place, as in Keras:
    `iterations` (which skipped steps do not advance) and `learning_rate` are the inner
    optimizer's, and `inner_optimizer.get_weights()` stays current. As in Keras, the
    inner optimizer's `loss_scale_factor` is turned off (it would unscale twice).
    `minimize(loss_fn, variables)` scales the loss itself and returns it unscaled.

    `get_weights()`: `[iterations, step_counter, dynamic_scale, *inner_slots]`, where
    `inner_slots` is `inner_optimizer.get_weights()[1:]` (its scalars, then its slots).

    `stateless_apply(state, grads, values)` is the pure step for use inside jit, with
    `state` the `LossScaleState` `opt.state` (or, in Keras's form, the flat list of the
    values of `opt.variables`: `[step_counter, dynamic_scale,
    *inner_optimizer.variables]`); `grads` are the gradients of the loss times the
    dynamic scale.

    It holds the inner optimizer and delegates to it (iterations, learning rate, weight
    decay exclusions, EMA); it shares only the `Facade` with the engine `Optimizer`, of
    which it is a virtual subclass.

    Args:
      inner_optimizer: the `kopt.optimizers.Optimizer` to wrap.
      initial_scale: the starting loss scale, a finite number > 0. Default `2.0**15`.
      dynamic_growth_steps: finite steps in a row after which the scale doubles, an int
        >= 1. Default 2000.
      name: optional name. Default "loss_scale_optimizer".

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = LossScaleOptimizer(kopt.optimizers.SGD(0.1), initial_scale=8.0)
      >>> grads = jax.grad(lambda x: opt.scale_loss(jnp.sum(x ** 2)))(w.value)
      >>> int(opt.apply_gradients([(grads, w)])), float(opt.dynamic_scale)
      (1, 8.0)
      >>> int(opt.apply_gradients([(grads * jnp.inf, w)])), float(opt.dynamic_scale)
      (1, 4.0)

    Reference: `keras.optimizers.LossScaleOptimizer`.
    """

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 name=None, **kwargs):
        if not isinstance(inner_optimizer, Optimizer):
            raise TypeError(
                "`inner_optimizer` must be a kopt.optimizers.Optimizer. Received: "
                f"inner_optimizer={inner_optimizer!r} of type {type(inner_optimizer).__name__}"
            )
        if not kwargs.pop("dynamic", True):
            raise ValueError(
                "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set "
                "`loss_scale_factor` directly on the `inner_optimizer`. (kopt: a fixed "
                "scale is the inner optimizer's `loss_scale_factor`.) Received: dynamic=False")
        for key, default in _BASE_DEFAULTS.items():
            if key not in kwargs:
                continue
            value = kwargs.pop(key)
            if (value is None) != (default is None) or value != default:
                raise ValueError(
                    f"LossScaleOptimizer does not support `{key}`. Instead, set `{key}` on "
                    f"the `inner_optimizer`. Received: {key}={value!r}; the inner optimizer "
                    f"is {type(inner_optimizer).__name__} {inner_optimizer.name!r}.")
        if kwargs:
            received = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ValueError(
                "LossScaleOptimizer does not support arguments: "
                f"`{'`, `'.join(kwargs.keys())}`. Received: {received}")
        _check_scale_arguments(initial_scale, dynamic_growth_steps)
        # As Keras: turn the inner optimizer's loss scaling off, or the gradients would be
        # unscaled twice. A MultiOptimizer passes it on to its own inner optimizers.
        _turn_off_loss_scale_factor(inner_optimizer)
        self.inner_optimizer = inner_optimizer
        self.initial_scale = initial_scale
        self.dynamic_growth_steps = dynamic_growth_steps
        self._own = None   # (step_counter, dynamic_scale) once built
        super().__init__(name if name is not None else "loss_scale_optimizer")
        self._transform = self._make_transform()

    # The inner optimizer holds its part of the state: `_state` and `_iterations` read
    # and write through to it, so the base class's compiled step updates both.
    @property
    def _state(self):
        own = self.__dict__.get("_own")
        if own is None:
            return None
        return LossScaleState(*own, self.inner_optimizer._state)

    @_state.setter
    def _state(self, state):
        if state is None:
            self._own = None
        else:
            self._own = (state.step_counter, state.dynamic_scale)
            self.inner_optimizer._state = state.inner

    @property
    def _state_lent(self):
        """Whether this state (or the inner optimizer's part of it) was handed out and
        must be copied before a step consumes it."""
        return bool(self.__dict__.get("_own_lent")) or bool(
            getattr(self.inner_optimizer, "_state_lent", False))

    @_state_lent.setter
    def _state_lent(self, value):
        self.__dict__["_own_lent"] = bool(value)
        if not value and "inner_optimizer" in self.__dict__:
            self.inner_optimizer._state_lent = False

    @property
    def _iterations(self):
        return self.inner_optimizer._iterations

    @_iterations.setter
    def _iterations(self, value):
        self.inner_optimizer._iterations = value

    def __getstate__(self):
        """The configuration, the inner optimizer (with its state) and the scale; not the
        compiled step."""
        with LOCK:
            d = {k: v for k, v in self.__dict__.items() if k not in _NOT_PICKLED}
            if self._own is not None:
                multihost.check_picklable(self._state, f"optimizer {self.name!r}")
                d["_own"] = jax.device_get(self._own)
            return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._minimize_cache = {}
        self._transform = self._make_transform()
        self._index = {}
        if self._vars is not None:
            self._index = dict(self.inner_optimizer._index)
            self._state = self._on_mesh(jax.tree.map(jnp.asarray, self._state))
            self._iterations = jnp.copy(self._state.count)
            self._compile()

    def _make_transform(self):
        self._inner_tx = self.inner_optimizer.transform
        if self._inner_tx is None:   # a MultiOptimizer has its transform once built
            return None
        return dynamic_loss_scale(self._inner_tx, self.initial_scale, self.dynamic_growth_steps)

    def _sync(self):
        """Follow a change of the inner optimizer's transform (a new schedule, say)."""
        inner_sync = getattr(self.inner_optimizer, "_sync", None)
        if inner_sync is not None:   # a wrapper inside: let it follow its own first
            inner_sync()
        if self.inner_optimizer.transform is not self._inner_tx:
            self._transform = self._make_transform()
            if self.built:
                self._compile()

    # ----------------------------------------------------------------- build and apply
    def build(self, variables) -> None:
        """Build the inner optimizer (kept as it is if already built with `variables`)."""
        variables = list(variables)
        if self._built_with(variables):
            return
        self.inner_optimizer.build(variables)
        self._vars = self.inner_optimizer._vars
        self._index = dict(self.inner_optimizer._index)
        self._transform = self._make_transform()
        self._own = (jnp.zeros((), jnp.int32), jnp.asarray(self.initial_scale, jnp.float32))
        self._state_lent = False
        self._compile()

    def _loss_step_fn(self, loss_fn):
        """`minimize`'s step: differentiate `loss_fn(values, *args) * dynamic_scale`,
        return the loss unscaled."""
        tx = self._transform

        def run(values, state, *a):
            def scaled(vals):
                loss = loss_fn(list(vals), *a)
                dtype = getattr(loss, "dtype", None)
                if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                    raise TypeError(
                        "minimize: loss_fn must return a floating-point scalar, since the "
                        "step differentiates it; an integer loss has no gradient. Received: "
                        f"a loss of dtype {dtype} "
                        f"(loss_fn={getattr(loss_fn, '__name__', loss_fn)!r}).")
                return _times(loss, state.dynamic_scale), loss

            (_, loss), grads = jax.value_and_grad(scaled, has_aux=True)(values)
            updates, state = tx.update(grads, state, values)
            return loss, apply_updates(values, updates), state, jnp.copy(state.count)

        return run

    def _keras_codec(self):
        """Keras's flat form of `variables`: see `Optimizer._keras_codec`."""
        m, unflat, flat = self.inner_optimizer._keras_codec()

        def unflatten(values):
            values = list(values)
            return LossScaleState(jnp.asarray(values[0], jnp.int32),
                                  jnp.asarray(values[1], jnp.float32), unflat(values[2:]))

        return 2 + m, unflatten, lambda st: [st.step_counter, st.dynamic_scale, *flat(st.inner)]

    # ----------------------------------------------------------------- scale and proxies
    @property
    def dynamic_scale(self) -> jax.Array:
        """The current loss scale, a float32 0-d `jax.Array` (a snapshot)."""
        if self._own is None:
            return jnp.asarray(self.initial_scale, jnp.float32)
        return jnp.copy(self._own[1])

    def scale_loss(self, loss):
        """`loss * dynamic_scale`, in float32 or wider (`initial_scale` before build).

        It reads the current scale when called. A jitted training step should instead
        take the state and multiply by `state.dynamic_scale` (see `stateless_apply`), or
        use `minimize`, which scales the loss itself.
        """
        return _times(loss, self.dynamic_scale)

    @property
    def iterations(self) -> jax.Array:
        """The inner optimizer's `iterations`: applied (not skipped) updates."""
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        """The inner optimizer's learning rate (read and set)."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """The inner optimizer's `exclude_from_weight_decay`."""
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def finalize_variable_values(self, var_list) -> None:
        """The inner optimizer's `finalize_variable_values`."""
        self.inner_optimizer.finalize_variable_values(var_list)

    # ----------------------------------------------------------------- weights
    @property
    def variables(self) -> list:
        """`[step_counter, dynamic_scale, *inner_optimizer.variables]`, Keras-style views
        (Keras's own LossScaleOptimizer also lists an unused iteration and learning rate
        of its own first)."""
        with LOCK:
            if not self.built:
                return []
            own = [OptimizerVariable(name, f"{self.name}/{name}",
                                     read=lambda k=k: jnp.copy(self._own[k]),
                                     write=lambda x, k=k: self._write_own(k, x))
                   for k, name in enumerate(("step_counter", "dynamic_scale"))]
            return own + list(self.inner_optimizer.variables)

    def _write_own(self, k, value):
        with LOCK:
            own = list(self._own)
            args = [own[0], own[1]]
            args[k] = value
            own[k] = _own_weights(*args)[k]
            self._own = tuple(own)

    def _weight_arrays(self) -> list:
        inner = self.inner_optimizer._weight_arrays()
        return [inner[0], self._own[0], self._own[1], *inner[1:]]

    def set_weights(self, weights) -> None:
        """Load `[iterations, step_counter, dynamic_scale, *inner slots]` (validated in
        full before any change)."""
        self._check_weights_list(weights)
        with LOCK:
            expected = 2 + len(self.inner_optimizer._weight_arrays())
            if len(weights) != expected:
                raise ValueError(
                    f"set_weights expected a list of {expected} arrays (iterations, "
                    f"step_counter, dynamic_scale, then the {expected - 3} of the inner "
                    f"optimizer {self.inner_optimizer.name!r}); received {len(weights)}.")
            own = _own_weights(weights[1], weights[2])

            def renumber(match):   # the inner list's entry k >= 1 is this list's entry k + 2
                k = int(match.group(1))
                return f"entry {k + 2 if k else 0}"

            # Everything is checked and converted before anything is assigned.
            try:
                state = self.inner_optimizer._state_from_weights([weights[0], *weights[3:]])
            except (ValueError, TypeError) as e:
                raise type(e)(re.sub(r"entry (\d+)", renumber, str(e))) from None
            self.inner_optimizer._state = state
            self.inner_optimizer._iterations = jnp.copy(state.count)
            self._own = own
            self._state_lent = False

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "inner_optimizer": serialize(self.inner_optimizer),
                "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        if not isinstance(config, dict):
            raise TypeError(f"from_config expects a dict. Received: {config!r}"[:300])
        check_config_tree(config)
        config = dict(config)
        if "inner_optimizer" not in config:
            raise ValueError(
                "A LossScaleOptimizer config needs an 'inner_optimizer' entry. Received keys: "
                f"{sorted(config)}")
        inner = config.pop("inner_optimizer")
        if isinstance(inner, dict):
            inner = deserialize(inner)
        return cls(inner, **config)


def _turn_off_loss_scale_factor(opt: Optimizer) -> None:
    """`opt.loss_scale_factor = None`, with its transform remade (its step recompiled)."""
    if isinstance(opt, MultiOptimizer):
        opt.loss_scale_factor = None   # passes it on to its optimizers, remakes its step
        return
    if opt.loss_scale_factor is None:
        return
    opt.loss_scale_factor = None
    opt._transform = opt._make_transform(opt._mask)
    if opt.built:
        opt._compile()


_INT32 = np.iinfo(np.int32)


def _own_weights(counter, scale):
    """`(step_counter, dynamic_scale)` as the state holds them, from `set_weights` entries
    1 and 2; every check is done before anything is converted."""
    counter, scale = np.asarray(counter), np.asarray(scale)
    if not (counter.shape == () and _is_real(counter) and np.isfinite(counter)
            and float(counter) == int(counter) and 0 <= int(counter) <= _INT32.max):
        raise ValueError(
            "set_weights: entry 1 (step_counter) must be a 0-d integer in [0, "
            f"{_INT32.max}] (int32). Received: {_describe(counter)}.")
    if not (scale.shape == () and _is_real(scale)):
        raise ValueError(
            "set_weights: entry 2 (dynamic_scale) must be a 0-d number, finite and > 0 in "
            f"float32. Received: {_describe(scale)}.")
    with np.errstate(over="ignore", under="ignore"):
        as_f32 = np.float32(scale)
    if not (np.isfinite(as_f32) and as_f32 > 0):
        raise ValueError(
            "set_weights: entry 2 (dynamic_scale) must be finite and > 0 in float32 (at "
            f"most {np.finfo(np.float32).max:.4g}). Received: {_describe(scale)}, which is "
            f"{as_f32!r} in float32.")
    return jnp.asarray(int(counter), jnp.int32), jnp.asarray(as_f32, jnp.float32)


def _is_real(x: np.ndarray) -> bool:
    return bool(np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating))


def _describe(x: np.ndarray) -> str:
    if x.shape == ():
        return f"{x.item()!r} of dtype {x.dtype}"
    return f"an array of shape {x.shape} and dtype {x.dtype}"


def _times(loss, scale):
    """`loss * scale` in the wider of the loss's dtype and float32."""
    loss = jnp.asarray(loss)
    wide = state_dtype_for(loss.dtype)
    return loss.astype(wide) * scale.astype(wide)


registry.register(LossScaleOptimizer, "config_only")
