"""The stateful facade: a Keras-style `Optimizer` over a functional transform.

The facade owns the Variables' bookkeeping, one compiled step, configs and weights I/O;
the maths is the functional transform's (`opt.transform`). `apply_gradients` runs a single
jitted function over all variables that takes the Variables' buffers and the optimizer
state as donated arguments, so a step allocates no new state and is compiled once per set
of shapes and dtypes. The learning rate lives in the state, so setting it never
recompiles.

This module is the engine (constructor and options, the transform, build, learning rate,
Keras weight layouts, configs, pickling); the step machinery it shares with the wrappers
is `kopt.stateful.facade.Facade`.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from kopt import schedules as schedules_lib
from kopt.functional.base import apply_updates
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.learning_rate import as_learning_rate, resolve_learning_rate
from kopt.stateful import minimize as minimize_lib
from kopt.stateful import multihost, registry
from kopt.stateful import weights as weights_io
from kopt.stateful.config_tree import check_config_tree
from kopt.stateful.derived import derived_doc, derived_init
from kopt.stateful.facade import Facade, checked_variables
from kopt.stateful.optimizer_variable import OptimizerVariable
from kopt.stateful.variable import (
    LOCK,
    Variable,
    read_value,
    variable_name,
)

__all__ = ["Optimizer"]


def _check_loss(loss) -> None:
    """`minimize`'s loss must be a real floating scalar (an integer loss has no gradient)."""
    dtype = getattr(loss, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.shape(loss) != ():
        raise TypeError(
            "minimize(): loss_fn must return a floating-point scalar. Received shape "
            f"{np.shape(loss)}, dtype {dtype}.")


def _rate_at(lr, step):
    """A schedule's (or callable's) learning rate at `step`."""
    return as_learning_rate(lr).value(None, jnp.asarray(step, jnp.int32))


def _checked_rate(rate) -> float:
    """A learning rate computed by a schedule, checked: a finite scalar >= 0."""
    value = np.asarray(rate)
    if value.shape != () or not np.isfinite(value) or not value >= 0:
        raise ValueError(
            "The learning-rate schedule must return a finite scalar >= 0. Received: "
            f"{value!r}")
    return float(value)


class Optimizer(Facade):
    """Base class of kopt's stateful optimizers.

    A subclass names its functional factory, `class Adam(Optimizer,
    factory=functional.adam)`, and gets a constructor derived from the factory's
    signature (`kopt.stateful.derived`). One that needs a different constructor defines
    `__init__` and passes its hyperparameters as `hyper`.
    """

    _factory = None

    def __init_subclass__(cls, factory=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if factory is not None:
            cls._factory = staticmethod(factory)
            if "__init__" not in cls.__dict__:
                cls.__init__ = derived_init(cls, factory)
                cls.__doc__ = derived_doc(cls, factory)
            if cls.__module__.startswith("kopt."):   # kopt's own: `get('adam')` finds it
                registry.register(cls)

    def __init__(self, learning_rate, hyper: dict[str, Any] | None = None,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None,
                 name=None, bucket_threshold=DEFAULT_BUCKET_THRESHOLD, **kwargs):
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.",
                          UserWarning, stacklevel=3)
        if kwargs:
            hint = " Use `learning_rate` instead of `lr`." if "lr" in kwargs else ""
            raise ValueError(f"Argument(s) not recognized: {kwargs}.{hint}")
        self.name = name if name is not None else type(self).__name__.lower()
        self._hyper = dict(hyper or {})
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        self.use_ema = use_ema
        self.ema_momentum = ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.bucket_threshold = bucket_threshold
        # A concrete number (Python, numpy or jax) becomes a Python float, held in the
        # state and settable; a callable stays a schedule.
        # (Wrappers whose rate lives elsewhere pass None.)
        self._learning_rate = (None if learning_rate is None
                               else resolve_learning_rate(learning_rate)[0])
        self._exclude_ids: set[int] = set()
        self._exclude_names: list[str] = []
        self._vars: tuple[Variable, ...] | None = None
        self._index: dict[int, int] = {}
        self._state = None
        self._mask = None   # the weight-decay mask, fixed at build
        self._minimize_cache: dict[Any, Any] = {}
        self._state_lent = False   # `opt.state` was handed out: copy before donating it
        self.donate_foreign_variables = False
        """Opt-in: let steps consume the buffers of foreign variables (keras.Variable,
        nnx), as they do `kopt.Variable`s'. Saves a copy of the params per step; arrays
        read earlier from those variables are then deleted by the next step, and a failing
        `assign` can no longer be undone."""
        self._transform = self._make_transform()   # validates every argument now

    # ----------------------------------------------------------------- pickling
    def __getstate__(self):
        """Pickle the configuration, the variables and the state; not the compiled step."""
        with LOCK:   # a consistent snapshot, also from another thread
            d = {k: v for k, v in self.__dict__.items()
                 if k not in ("_transform", "_step", "_minimize_cache", "_index",
                              "_exclude_ids", "_iterations_var", "_plain_key")}
            if self._state is not None:
                multihost.check_picklable(self._state, f"optimizer {self.name!r}")
                d["_state"] = jax.device_get(self._state)
                d["_iterations"] = None
            return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self.__dict__.setdefault("_state_lent", False)
        self.__dict__.setdefault("donate_foreign_variables", False)
        self._exclude_ids = set()
        self._minimize_cache = {}
        self._transform = self._make_transform(self._mask)
        self._index = {}
        if self._vars is not None:
            self._index = {id(v): i for i, v in enumerate(self._vars)}
            self._state = self._on_mesh(jax.tree.map(jnp.asarray, self._state))
            self._iterations = jnp.copy(self._state.count)
            self._compile()

    def __getattr__(self, key):
        hyper = self.__dict__.get("_hyper", {})
        if key in hyper:
            return hyper[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    # ----------------------------------------------------------------- transform
    def _make_transform(self, mask=None):
        return type(self)._factory(
            learning_rate=self._learning_rate, **self._hyper, **self._common_kwargs(),
            weight_decay_mask=mask, bucket_threshold=self.bucket_threshold,
        )

    def _common_kwargs(self):
        return dict(weight_decay=self.weight_decay, clipnorm=self.clipnorm,
                    clipvalue=self.clipvalue, global_clipnorm=self.global_clipnorm,
                    use_ema=self.use_ema, ema_momentum=self.ema_momentum,
                    ema_overwrite_frequency=self.ema_overwrite_frequency,
                    loss_scale_factor=self.loss_scale_factor,
                    gradient_accumulation_steps=self.gradient_accumulation_steps)

    def scale_loss(self, loss):
        """`loss * loss_scale_factor`, or `loss` when the factor is None (as Keras).

        Gradients of the scaled loss are divided by the factor again before the update.
        """
        if self.loss_scale_factor is not None:
            return loss * self.loss_scale_factor
        return loss

    def finalize_variable_values(self, var_list) -> None:
        """With `use_ema`, assign each variable its moving average (Keras's end of `fit`).

        `var_list` holds variables this optimizer was built with. Without `use_ema` this
        does nothing.
        """
        if not self.use_ema or not self.built or int(self.iterations) == 0:
            return   # (never stepped: the averages hold nothing yet, and Keras would zero)
        var_list = list(var_list)
        for v, i in zip(var_list, self._built_indices(var_list, "finalize_variable_values")):
            v.assign(weights_io.slot_leaf(self._state.ema, i))

    def _schedule_step(self):
        """The step schedules read: raw calls under gradient accumulation, as Keras."""
        micro = getattr(self._state, "micro_step", None)
        return self._state.count if micro is None else micro

    @classmethod
    def from_transform(cls, tx, name=None):
        """Wrap any `(init, update)` transform, kopt's or optax's, in the stateful facade.

        See `kopt.stateful.transform_optimizer.TransformOptimizer`.
        """
        return registry.wrapper("TransformOptimizer")(tx, name=name)

    def _loss_step_fn(self, loss_fn):
        """The pure `minimize` step `(values, state, *args) -> (loss, values, state, count)`."""
        tx = self._transform
        factor = self.loss_scale_factor

        def scaled_loss(vals, *a):
            # As Keras's trainer: differentiate the scaled loss (the update divides the
            # gradients by the factor again) and report the unscaled one.
            loss = loss_fn(list(vals), *a)
            _check_loss(loss)
            return (loss if factor is None else loss * factor), loss

        def run(values, state, *a):
            (_, loss), grads = jax.value_and_grad(scaled_loss, has_aux=True)(values, *a)
            updates, state = tx.update(grads, state, values)
            return loss, apply_updates(values, updates), state, jnp.copy(state.count)

        return run

    # ----------------------------------------------------------------- build
    def build(self, variables) -> None:
        """Create the optimizer state for `variables` (all-or-nothing).

        Variables are `kopt.Variable`s, or any variable-like object with `value`,
        `assign(x)`, `shape` and `dtype`, such as `keras.Variable` on the JAX backend
        (updated through its own `assign`). An empty list builds an optimizer with no
        variables, as Keras allows.
        """
        variables = checked_variables(variables)
        with LOCK:
            if self._built_with(variables):
                return
            # Everything is computed first and assigned last: a failure changes nothing.
            # (`_vars` is set meanwhile: `_make_transform` may read it, as LARS does.)
            self._vars = tuple(variables)
            try:
                mask = self._decay_mask(variables)
                transform = self._make_transform(mask)
                values = tuple(read_value(v) for v in variables)
                state = self._placed(transform.init(values), values)
                if callable(self._learning_rate):   # a schedule's first rate, checked once
                    _checked_rate(multihost.to_host(state.learning_rate))
            except BaseException:
                self._vars = None
                raise
            self._index = {id(v): i for i, v in enumerate(variables)}
            self._mask, self._transform = mask, transform
            self._state, self._iterations = state, jnp.copy(state.count)
            self._state_lent = False
            self._compile()

    def _new_learning_rate(self, value):
        """A new `learning_rate` state field, placed as the old one (no recompile)."""
        new, old = jnp.asarray(value, jnp.float32), self._state.learning_rate.sharding
        return jax.device_put(new, old) if isinstance(old, NamedSharding) else new

    def _decay_mask(self, variables):
        if not (self._exclude_ids or self._exclude_names):
            return None
        return tuple(
            not (id(v) in self._exclude_ids
                 or any(re.search(n, variable_name(v)) for n in self._exclude_names))
            for v in variables
        )

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Exclude variables (by object, or by regex search on their names) from decay."""
        if self.built:
            raise ValueError(
                "exclude_from_weight_decay() must be called before the optimizer is built."
            )
        names = list(var_names or [])
        for n in names:
            try:
                re.compile(n)
            except (TypeError, re.error) as e:
                raise ValueError(
                    "exclude_from_weight_decay: `var_names` must be regular expressions. "
                    f"Received: {n!r} ({e})") from e
        self._exclude_ids.update(id(v) for v in (var_list or []))
        self._exclude_names.extend(names)

    # The gradient and the update fused in one compiled call (see kopt.stateful.minimize).
    minimize = minimize_lib.minimize

    def _keras_codec(self):
        """`(n, unflatten, flatten)` for Keras's flat form of `variables`: `n` arrays,
        `unflatten(flat) -> state` and `flatten(state) -> flat` (both traceable).
        Wrappers whose `variables` combine several states override this."""
        entries = self._keras_entries()
        return (len(entries), lambda flat: self._unflatten(entries, list(flat)),
                lambda state: [weights_io.entry_value(state, e) for e in entries])

    @property
    def iterations(self) -> OptimizerVariable:
        """The number of applied updates, a variable-like 0-d int32 (as Keras's
        `optimizer.iterations`): `int()`, `.value`, `.numpy()` and arithmetic work.

        Reading it does not wait for the step to finish; `int(opt.iterations)` does.
        """
        it = self.__dict__.get("_iterations_var")
        if it is None:
            it = self._iterations_var = OptimizerVariable(
                "iteration", f"{self.name}/iteration", read=self._read_iterations,
                write=functools.partial(self._write_entry, ("count", None, None)))
        return it

    def _read_iterations(self):
        with LOCK:
            if self._state is None:
                return jnp.zeros((), jnp.int32)
            return self._iterations

    @property
    def learning_rate(self):
        """The learning rate the next update uses (a float32 0-d numpy array)."""
        with LOCK:
            if self._state is not None:
                return multihost.to_host(self._state.learning_rate)
            lr = self._learning_rate
            return np.asarray(_rate_at(lr, 0) if callable(lr) else lr, np.float32)

    @learning_rate.setter
    def learning_rate(self, value):
        with LOCK:
            self._set_learning_rate(value)

    def _set_learning_rate(self, value):
        """Validate the new rate (and, for a schedule, its value now) before any change."""
        old = self._learning_rate
        if callable(value):
            self._learning_rate = value
            try:
                transform = self._make_transform(self._mask)
                rate = (_checked_rate(_rate_at(value, self._schedule_step()))
                        if self.built else None)
            finally:
                self._learning_rate = old
            self._learning_rate, self._transform = value, transform
            if self.built:
                self._state = self._state._replace(learning_rate=self._new_learning_rate(rate))
                self._compile()
            return
        if callable(old):
            raise TypeError(
                "This optimizer was created with a learning-rate schedule, so its learning "
                f"rate cannot be set to a number. Received: learning_rate={value!r}. Set a "
                "new schedule instead."
            )
        try:
            number = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"learning_rate must be a number or a schedule. Received: {value!r}") from e
        if not (number >= 0 and np.isfinite(number)):
            raise ValueError(
                f"`learning_rate` must be a finite number >= 0. Received: learning_rate={value}")
        self._learning_rate = number
        if self.built:
            self._state = self._state._replace(learning_rate=self._new_learning_rate(number))

    # ----------------------------------------------------------------- weights
    _keras_slot_groups: tuple[tuple[str, ...], ...] = ()
    """Groups of state fields that Keras creates in one `add_optimizer_variables` call
    (listed variable by variable, e.g. Adam's `(("m", "v"), ("vhat",))`); a field in no
    group is created on its own, for all variables, in field order."""

    _keras_slot_names: dict[str, str] = {}
    """Keras's names for this optimizer's state fields, where they differ from
    `weights.KERAS_SLOT_NAMES` (e.g. RMSprop's `rms` is Keras's `velocity`)."""

    def _var_names(self) -> list[str]:
        return [variable_name(v) for v in self._vars]

    def _weight_fields(self):
        """`(scalars, slots)`: the state fields `get_weights` lists (`weights.weight_fields`)."""
        return weights_io.weight_fields(self._state, len(self._vars), type(self).__name__)

    def _keras_entries(self) -> list[tuple]:
        """What `variables` lists, in Keras 3's order (`weights.keras_entries`)."""
        return weights_io.keras_entries(self._state, len(self._vars),
                                        callable(self._learning_rate),
                                        self._keras_slot_groups, type(self).__name__)

    def _entry_name(self, entry) -> str:
        return weights_io.entry_name(entry, self._var_names(), self._keras_slot_names)

    @property
    def variables(self) -> list[OptimizerVariable]:
        """The optimizer's state as Keras-style variables, in Keras 3's order: the
        iteration count, the learning rate unless it is a schedule, then each variable's
        slots (see `_keras_entries`). Each is a live view with `.value`, `.numpy()`,
        `.name`, `.path` and `.assign(x)`; `.value` returns a copy that later steps never
        delete. Empty before build. This is not `get_weights()`'s (legacy) order.
        """
        with LOCK:
            if not self.built:
                return []
            entries = self._keras_entries()
            out = [self.iterations] if entries[0][0] == "count" else []
            for entry in entries[len(out):]:
                name = self._entry_name(entry)
                out.append(OptimizerVariable(
                    name, f"{self.name}/{name}",
                    read=functools.partial(self._read_entry, entry),
                    write=functools.partial(self._write_entry, entry)))
            return out

    def _unflatten(self, entries, flat):
        """The state with the arrays of `entries` replaced by `flat` (traceable). Under
        gradient accumulation the update count follows the raw count, as in Keras."""
        state = weights_io.unflatten_entries(entries, flat, self._state)
        if entries[0][0] == "micro_step":
            steps = self.gradient_accumulation_steps
            state = state._replace(count=(state.micro_step // steps).astype(state.count.dtype))
        return state

    def _read_entry(self, entry):
        with LOCK:
            return jnp.copy(weights_io.entry_value(self._state, entry))

    def _write_entry(self, entry, value):
        with LOCK:
            like = weights_io.entry_value(self._state, entry)
            new = weights_io.host_array(value, f"optimizer variable {self._entry_name(entry)!r}", like)
            if entry[0] in ("count", "micro_step"):
                weights_io.check_count(new, "iterations")
            elif entry[0] == "learning_rate":
                if callable(self._learning_rate):
                    raise TypeError("The learning rate is a schedule; it cannot be assigned.")
                _checked_rate(new)
            entries = self._keras_entries()
            if entry not in entries:   # `iterations` under gradient accumulation
                state = self._state._replace(count=jnp.array(new, like.dtype))
            else:
                flat = [weights_io.entry_value(self._state, e) for e in entries]
                flat[entries.index(entry)] = jnp.array(new, like.dtype)
                state = self._unflatten(entries, flat)
            state = self._on_mesh(state)
            self._state, self._iterations = state, jnp.copy(state.count)
            if entry[0] == "learning_rate":
                self._learning_rate = float(new)

    def get_weights(self) -> list[np.ndarray]:
        """`[iterations, scalars..., slot_1 of every variable, slot_2 of every variable, ...]`.

        The legacy tf.keras (OptimizerV2) layout. Scalar state shared by all variables
        (Nadam's `momentum_cache`) comes right after the iteration count. The per-variable
        slots follow slot by slot, in the state's field order (e.g. Adam: m, v, vhat;
        RMSprop: rms, momentum, mg), except where the state class says
        `weights_by_variable` (Ftrl: accumulator and linear alternate per variable).

        The cross-cutting options add state of their own, after the optimizer's:
        with `gradient_accumulation_steps`, the raw call count `micro_step` is the last
        scalar (after the iteration count and any optimizer scalar), and the gradient
        accumulator `accum` is the last per-variable slot; with `use_ema`, the moving
        average `ema` is a per-variable slot after the optimizer's slots (before `accum`).

        Low-precision state (`state_dtype`): with 'bfloat16' the slots are bfloat16
        arrays and the stochastic-rounding `seed` (uint32) is a scalar after the
        iteration count (before `micro_step`). With 'int8', the slot entry of each
        quantised variable (at least `min_quantized_size` elements) is two consecutive
        arrays instead of one: its codes, int8 (signed map) or uint8 (unsigned map,
        second moments) of shape `(nblocks, 2048)`, then its block scales, float32 of
        shape `(nblocks,)`, with `nblocks = ceil(size / 2048)`. The slot's value is
        `kopt.functional.quantize.decode(codes) * scales[:, None]`, flattened, its first
        `size` elements reshaped like the variable. Smaller variables keep one float32
        array. `set_weights` loads this layout back exactly.

        The arrays are copies: later steps never change them. Safe to call from another
        thread while training (it sees the state between two steps).
        """
        with LOCK:
            if not self.built:
                return []
            return [np.array(x) for x in multihost.to_host(self._weight_arrays())]

    def _weight_arrays(self) -> list:
        """The live arrays `get_weights` lists (wrappers with other layouts override)."""
        return weights_io.weight_arrays(self._state, len(self._vars), type(self).__name__)

    def _state_from_weights(self, weights):
        """The state `weights` (a `get_weights` list) describes, validated, the schedule's
        rate at its count, placed like the current state."""
        state = weights_io.state_from_weights(weights, self._state, self._var_names(),
                                              type(self).__name__)
        if callable(self._learning_rate):
            step = getattr(state, "micro_step", None)
            rate = _checked_rate(_rate_at(self._learning_rate, state.count if step is None else step))
            state = state._replace(learning_rate=jnp.asarray(rate, jnp.float32))
        # Placed like the current state, after checking every process passed the same list.
        return multihost.from_host_tree(state, self._state, "set_weights")

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        lr = self._learning_rate
        if isinstance(lr, schedules_lib.LearningRateSchedule):
            lr = schedules_lib.serialize(lr)
        elif callable(lr):
            raise ValueError(
                "get_config: a plain callable learning rate cannot be serialised; use a "
                "kopt.schedules.LearningRateSchedule.")
        return {"name": self.name, "learning_rate": lr, **self._hyper,
                **self._common_kwargs(), "bucket_threshold": self.bucket_threshold}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        if not isinstance(config, dict):
            raise TypeError(f"from_config expects a dict. Received: {config!r}")
        check_config_tree(config)
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            config["learning_rate"] = schedules_lib.deserialize(lr)
        return cls(**config)

