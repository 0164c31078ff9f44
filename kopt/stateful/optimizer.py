"""The stateful facade: a Keras-style `Optimizer` over a functional transform.

The facade owns the Variables' bookkeeping, one compiled step, configs and weights I/O;
the maths is the functional transform's (`opt.transform`). `apply_gradients` runs a single
jitted function over all variables that takes the Variables' buffers and the optimizer
state as donated arguments, so a step allocates no new state and is compiled once per set
of shapes and dtypes. The learning rate lives in the state, so setting it never
recompiles.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from kopt import schedules as schedules_lib
from kopt.functional.base import apply_updates
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD, Packed
from kopt.functional.quantize import Quantized
from kopt.functional.sharding import state_shardings
from kopt.stateful import multihost
from kopt.stateful.variable import Variable

__all__ = ["Optimizer"]


def _tracing() -> bool:
    try:
        from jax._src import core
        return not core.trace_state_clean()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return False


def _check_grads(grads, values, names):
    """Runs when the step is traced, before anything is executed or donated."""
    for g, v, name in zip(grads, values, names):
        if g is None:
            continue
        shape, dtype = getattr(g, "shape", None), getattr(g, "dtype", None)
        if shape != v.shape:
            raise ValueError(
                f"Gradient for variable {name!r} has shape {shape}, but the variable has "
                f"shape {v.shape}."
            )
        if dtype != v.dtype:
            raise ValueError(
                f"Gradient for variable {name!r} has dtype {dtype}, but the variable has "
                f"dtype {v.dtype}. Cast the gradient to the variable's dtype."
            )


def _is_variable(v) -> bool:
    """A kopt.Variable, or any variable-like object (keras.Variable, ...) with `value`,
    `assign`, `shape` and `dtype`."""
    if isinstance(v, Variable):
        return True
    return all(hasattr(v, a) for a in ("value", "assign", "shape", "dtype"))


def _read(v):
    return v._value if type(v) is Variable else jnp.asarray(v.value)


def _write(v, value):
    if type(v) is Variable:
        v._value = value
    else:   # keras.Variable and friends: their own assign (no copy needed: we own `value`)
        v.assign(value)


def _var_name(v) -> str:
    name = getattr(v, "path", None) or getattr(v, "name", None)
    return str(name) if name is not None else repr(v)


class Optimizer:
    """Base class of kopt's stateful optimizers.

    Subclasses pass their own hyperparameters as `hyper` and set `_factory`, the
    `kopt.functional` function with the same arguments.
    """

    _factory = None

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
        self._learning_rate = learning_rate
        self._exclude_ids: set[int] = set()
        self._exclude_names: list[str] = []
        self._vars: tuple[Variable, ...] | None = None
        self._index: dict[int, int] = {}
        self._state = None
        self._mask = None   # the weight-decay mask, fixed at build
        self._minimize_cache: dict[Any, Any] = {}
        self._transform = self._make_transform()   # validates every argument now

    # ----------------------------------------------------------------- pickling
    def __getstate__(self):
        """Pickle the configuration, the variables and the state; not the compiled step."""
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("_transform", "_step", "_minimize_cache", "_index", "_exclude_ids")}
        if self._state is not None:
            multihost.check_picklable(self._state, f"optimizer {self.name!r}")
            d["_state"] = jax.device_get(self._state)
            d["_iterations"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
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
        if not self.use_ema or not self.built:
            return
        var_list = list(var_list)
        idx = []
        for v in var_list:
            i = self._index.get(id(v))
            if i is None or self._vars[i] is not v:
                raise ValueError(
                    f"finalize_variable_values: variable {_var_name(v)!r} is not "
                    f"among the variables optimizer {self.name!r} was built with.")
            idx.append(i)
        for v, i in zip(var_list, idx):
            v.assign(self._slot_leaf(self._state.ema, i))

    def _schedule_step(self):
        """The step schedules read: raw calls under gradient accumulation, as Keras."""
        micro = getattr(self._state, "micro_step", None)
        return self._state.count if micro is None else micro

    @classmethod
    def from_transform(cls, tx, name=None):
        """Wrap any `(init, update)` transform, kopt's or optax's, in the stateful facade.

        See `kopt.stateful.transform_optimizer.TransformOptimizer`.
        """
        from kopt.stateful.transform_optimizer import TransformOptimizer
        return TransformOptimizer(tx, name=name)

    @property
    def transform(self):
        """The functional `Transform` this optimizer runs."""
        return self._transform

    def _compile(self):
        tx = self._transform

        names = [_var_name(v) for v in self._vars]

        def step(values, state, grads):
            _check_grads(grads, values, names)
            updates, state = tx.update(grads, state, values)
            # `iterations` gets its own (undonated) copy of the count, so reading it
            # never waits on the device and a held reference stays valid.
            return apply_updates(values, updates), state, jnp.copy(state.count)

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._minimize_cache.clear()

    # ----------------------------------------------------------------- build
    @property
    def built(self) -> bool:
        return self._vars is not None

    def build(self, variables) -> None:
        """Create the optimizer state for `variables`.

        Variables are `kopt.Variable`s, or any variable-like object with `value`,
        `assign(x)`, `shape` and `dtype`, such as `keras.Variable` on the JAX backend
        (updated through its own `assign`).
        """
        variables = list(variables)
        for i, v in enumerate(variables):
            if not _is_variable(v):
                raise TypeError(
                    f"build() expects variables (kopt.Variable or keras.Variable); entry {i} "
                    f"is {type(v).__name__}. Wrap arrays with kopt.Variable(array)."
                )
        if not variables:
            raise ValueError("build() received no variables.")
        if len({id(v) for v in variables}) != len(variables):
            raise ValueError("build() received the same Variable more than once.")
        if self.built:
            if [id(v) for v in variables] == [id(v) for v in self._vars]:
                return
            raise ValueError(
                f"Optimizer {self.name!r} was already built with {len(self._vars)} variables; "
                "it cannot be rebuilt with a different set. Create a new optimizer."
            )
        self._vars = tuple(variables)
        self._index = {id(v): i for i, v in enumerate(variables)}
        self._mask = self._decay_mask()
        self._transform = self._make_transform(self._mask)
        self._state = self._on_mesh(self._transform.init(tuple(_read(v) for v in variables)))
        self._iterations = jnp.copy(self._state.count)
        self._compile()

    def _on_mesh(self, state):
        """`state`, placed where the variables live when they are on a mesh: sharded like
        them, and the rest (counters, buckets, made on one device) replicated, so that
        the compiled step always sees the same input shardings and compiles once."""
        values = tuple(_read(v) for v in self._vars)
        if any(isinstance(getattr(x, "sharding", None), NamedSharding) for x in values):
            return jax.device_put(state, state_shardings(state, values))
        return state

    def _new_learning_rate(self, value):
        """A new `learning_rate` state field, placed as the old one (no recompile)."""
        new, old = jnp.asarray(value, jnp.float32), self._state.learning_rate.sharding
        return jax.device_put(new, old) if isinstance(old, NamedSharding) else new

    def _decay_mask(self):
        if not (self._exclude_ids or self._exclude_names) or self._vars is None:
            return None
        return tuple(
            not (id(v) in self._exclude_ids
                 or any(re.search(n, _var_name(v)) for n in self._exclude_names))
            for v in self._vars
        )

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Exclude variables (by object, or by regex search on their names) from decay."""
        if self.built:
            raise ValueError(
                "exclude_from_weight_decay() must be called before the optimizer is built."
            )
        self._exclude_ids.update(id(v) for v in (var_list or []))
        self._exclude_names.extend(var_names or [])

    # ----------------------------------------------------------------- apply
    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        """Apply `(gradient, variable)` pairs in one compiled step; returns `iterations`.

        Pairs whose gradient is None are skipped.
        """
        del name, experimental_aggregate_gradients
        try:
            pairs = list(grads_and_vars)
            grads, variables = zip(*pairs) if pairs else ((), ())
            if any(len(p) != 2 for p in pairs):
                raise ValueError
        except (TypeError, ValueError) as e:
            raise TypeError(
                "apply_gradients expects an iterable of (gradient, variable) pairs, e.g. "
                f"zip(grads, variables). Received: {grads_and_vars!r}"
            ) from e
        return self.apply(grads, variables)

    def apply(self, grads, variables=None):
        """Apply `grads` to `variables` (Keras 3 argument order); returns `iterations`."""
        if _tracing():
            raise RuntimeError(
                "The stateful optimizer cannot be called inside a JAX transformation "
                "(jit, grad, vmap...). Use kopt.functional (opt.transform) or "
                "opt.stateless_apply(state, grads, values) inside jitted code."
            )
        if variables is None:
            if not self.built:
                raise ValueError("apply(grads) without variables needs a built optimizer.")
            variables = self._vars
        grads, variables = list(grads), list(variables)
        if len(grads) != len(variables):
            raise ValueError(
                f"Received {len(grads)} gradients for {len(variables)} variables; they must "
                "be equal in number."
            )
        if all(g is None for g in grads):
            raise ValueError(
                f"No gradients provided for any variable: {[getattr(v, 'name', v) for v in variables]}."
            )
        if not self.built:
            self.build(variables)
        full = self._full_grads(grads, variables)
        new_values, self._state, self._iterations = self._step(
            self._read_values(), self._state, full)
        self._write_values(new_values)
        return self._iterations

    def _plain(self) -> bool:
        """Whether every variable is a `kopt.Variable` (read and written directly)."""
        key = self.__dict__.get("_plain_key")
        if key is None or key[0] is not self._vars:
            key = self._plain_key = (self._vars, all(type(v) is Variable for v in self._vars))
        return key[1]

    def _read_values(self):
        if self._plain():   # no per-variable function call on the hot path
            return tuple([v._value for v in self._vars])
        return tuple([_read(v) for v in self._vars])

    def _write_values(self, new_values):
        if self._plain():
            for v, value in zip(self._vars, new_values):
                v._value = value
        else:
            for v, value in zip(self._vars, new_values):
                _write(v, value)

    def _full_grads(self, grads, variables):
        """Gradients as a tuple aligned with the built variables (None where absent).

        Shapes and dtypes are checked by `_check_grads` when the step is traced, so a
        call with a known signature does no per-leaf work in Python.
        """
        built = self._vars
        if len(variables) == len(built) and all(a is b for a, b in zip(variables, built)):
            full = grads
        else:
            full = [None] * len(built)
            for g, v in zip(grads, variables):
                i = self._index.get(id(v))
                if i is None or built[i] is not v:
                    raise ValueError(
                        f"Variable {_var_name(v)!r} is not among the "
                        f"{len(built)} variables optimizer {self.name!r} was built with. "
                        "Create a new optimizer for a new set of variables."
                    )
                if full[i] is not None:
                    raise ValueError(
                        f"Variable {_var_name(v)!r} appears more than once in grads_and_vars; "
                        "sum its gradients and pass it once."
                    )
                full[i] = g
        return tuple(full)

    def minimize(self, loss_fn, variables, *args):
        """Differentiate `loss_fn(values, *args)` and apply the step in one compiled call.

        `values` is the list of the variables' arrays. Returns the loss. Pass data through
        `*args` (traced) rather than a new closure per call, which would recompile.
        """
        if _tracing():
            raise RuntimeError(
                "minimize() cannot be called inside a JAX transformation (jit, grad, vmap...). "
                "Use kopt.functional (opt.transform) or opt.stateless_apply inside jitted code."
            )
        variables = list(variables)
        if not self.built:
            self.build(variables)
        elif [id(v) for v in variables] != [id(v) for v in self._vars]:
            raise ValueError(
                "minimize() must be called with the variables the optimizer was built with."
            )
        fn = self._minimize_cache.get(loss_fn)
        if fn is None:
            tx = self._transform

            factor = self.loss_scale_factor

            def scaled_loss(vals, *a):
                # As Keras's trainer: differentiate the scaled loss (the update divides the
                # gradients by the factor again) and report the unscaled one.
                loss = loss_fn(list(vals), *a)
                return (loss if factor is None else loss * factor), loss

            def run(values, state, *a):
                (_, loss), grads = jax.value_and_grad(scaled_loss, has_aux=True)(values, *a)
                updates, state = tx.update(grads, state, values)
                return loss, apply_updates(values, updates), state, jnp.copy(state.count)

            fn = self._minimize_cache[loss_fn] = jax.jit(run, donate_argnums=(0, 1))
        loss, new_values, self._state, self._iterations = fn(
            self._read_values(), self._state, *args)
        self._write_values(new_values)
        return loss

    def stateless_apply(self, state, grads, values):
        """The pure step, for use inside jit: `(state, grads, values) -> (values, state)`.

        `state` is `opt.state`; `grads` and `values` are sequences aligned with the built
        variables. Write results back with `opt.state = state` and `v.assign(value)`.
        """
        updates, state = self._transform.update(tuple(grads), state, tuple(values))
        return list(apply_updates(tuple(values), updates)), state

    # ----------------------------------------------------------------- state
    @property
    def state(self):
        """The functional state pytree (None before build)."""
        return self._state

    @state.setter
    def state(self, new_state):
        if not self.built:
            raise ValueError("Build the optimizer before assigning its state.")
        if jax.tree.structure(new_state) != jax.tree.structure(self._state):
            raise ValueError(
                "The new state does not have the structure of this optimizer's state. "
                f"Expected {jax.tree.structure(self._state)}, received {jax.tree.structure(new_state)}."
            )
        self._state = self._on_mesh(new_state)
        self._iterations = jnp.copy(self._state.count)

    @property
    def iterations(self) -> jax.Array:
        """The number of applied updates, a 0-d int32 `jax.Array` (`int()` works).

        Reading it does not wait for the step to finish; `int(opt.iterations)` does.
        """
        if self._state is None:
            return jnp.zeros((), jnp.int32)
        return self._iterations

    @property
    def learning_rate(self):
        """The learning rate the next update uses (a float32 0-d numpy array)."""
        if self._state is not None:
            return multihost.to_host(self._state.learning_rate)
        lr = self._learning_rate
        return np.asarray(lr(0) if callable(lr) else lr, np.float32)

    @learning_rate.setter
    def learning_rate(self, value):
        old = self._learning_rate
        if callable(value):
            self._learning_rate = value
            try:
                transform = self._make_transform(self._mask)
            except Exception:
                self._learning_rate = old
                raise
            self._transform = transform
            if self.built:
                self._state = self._state._replace(
                    learning_rate=self._new_learning_rate(value(self._schedule_step())))
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
        if not number >= 0:
            raise ValueError(f"`learning_rate` must be >= 0. Received: learning_rate={value}")
        self._learning_rate = number
        if self.built:
            self._state = self._state._replace(learning_rate=self._new_learning_rate(number))

    # ----------------------------------------------------------------- weights
    def _weight_fields(self):
        """The state's fields that `get_weights` lists: `(scalars, slots)`.

        `scalars` are 0-d fields shared by all variables (Nadam's `momentum_cache`);
        `slots` are the per-variable fields: a `Packed`, or a tuple with one array per
        variable (Adafactor's factored rows, whose shapes differ from the variable's).
        Both in field order; fields that are None (a disabled option) are left out.
        """
        scalars, slots = [], []
        n = len(self._vars)
        for f in self._state._fields[2:]:
            x = getattr(self._state, f)
            if x is None:
                continue
            if isinstance(x, Packed) or (isinstance(x, tuple) and len(x) == n
                                         and all(hasattr(a, "shape") for a in x)):
                slots.append(f)
            elif getattr(x, "shape", None) == ():
                scalars.append(f)
            else:
                raise TypeError(
                    f"{type(self).__name__}: state field {f!r} is neither a 0-d scalar nor "
                    "per-variable; it cannot be listed by get_weights.")
        return scalars, slots

    @staticmethod
    def _slot_leaf(field, j):
        return field.leaf(j) if isinstance(field, Packed) else field[j]

    @staticmethod
    def _entry_arrays(leaf) -> list:
        """The `get_weights` arrays of one slot entry: the array itself, or, for a
        quantised entry (int8 state), its codes and then its block scales."""
        if isinstance(leaf, Quantized):
            return [leaf.codes, leaf.absmax]
        return [leaf]

    def _slot_entries(self, slots):
        """`(slot, variable index)` for each per-variable entry, in `get_weights` order.

        Slot by slot, unless the state class sets `weights_by_variable = True` (Ftrl):
        then variable by variable, each with all its slots.
        """
        n = len(self._vars)
        if getattr(type(self._state), "weights_by_variable", False):
            return [(name, j) for j in range(n) for name in slots]
        return [(name, j) for name in slots for j in range(n)]

    @property
    def variables(self) -> list[jax.Array]:
        """The optimizer state as arrays, in `get_weights` order (snapshots)."""
        if not self.built:
            return []
        scalars, slots = self._weight_fields()
        out = [jnp.copy(self._state.count)]
        out.extend(jnp.copy(getattr(self._state, name)) for name in scalars)
        for name, j in self._slot_entries(slots):
            leaf = self._slot_leaf(getattr(self._state, name), j)
            out.extend(jnp.copy(a) for a in self._entry_arrays(leaf))
        return out

    @property
    def weights(self) -> list[jax.Array]:
        return self.variables

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
        """
        if not self.built:
            return []
        return multihost.to_host(self.variables)

    def set_weights(self, weights) -> None:
        """Load a list produced by `get_weights` (validated in full before any change)."""
        if not self.built:
            raise ValueError(
                "set_weights() needs a built optimizer: call opt.build(variables) first.")
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"set_weights expects a list of arrays. Received: {type(weights).__name__}")
        scalars, names = self._weight_fields()
        entries = self._slot_entries(names)
        n = len(self._vars)
        current = [self._slot_leaf(getattr(self._state, name), j) for name, j in entries]
        n_quantized = sum(isinstance(leaf, Quantized) for leaf in current)
        expected = 1 + len(scalars) + len(entries) + n_quantized
        if len(weights) != expected:
            shared = f"{len(scalars)} scalar(s) {scalars}, then " if scalars else ""
            quantized = (f", {n_quantized} of them quantised (codes and scales)"
                         if n_quantized else "")
            raise ValueError(
                f"set_weights expected a list of {expected} arrays (iterations, then {shared}"
                f"{len(names)} slot(s) {names} for each of {n} variables{quantized}); "
                f"received {len(weights)}."
            )
        count = np.asarray(weights[0])
        if count.shape != () or not (np.issubdtype(count.dtype, np.integer)
                                     or (np.issubdtype(count.dtype, np.floating)
                                         and float(count) == int(count))):
            raise ValueError(
                "set_weights: entry 0 must be the iteration count, a 0-d integer. "
                f"Received shape {count.shape}, dtype {count.dtype}."
            )

        def real(w, k, what):   # jnp.issubdtype knows bfloat16 is a float
            if not (jnp.issubdtype(w.dtype, jnp.floating) or np.issubdtype(w.dtype, np.integer)):
                raise ValueError(
                    f"set_weights: entry {k} ({what}) has dtype {w.dtype}; expected a real "
                    "number array."
                )

        new = {}
        for k, name in enumerate(scalars, start=1):
            w = np.asarray(weights[k])
            if w.shape != ():
                raise ValueError(
                    f"set_weights: entry {k} ({name}) has shape {w.shape}, expected ()."
                )
            real(w, k, name)
            new[name] = jnp.asarray(w, getattr(self._state, name).dtype)
        def array(k, like, what):
            w = np.asarray(weights[k])
            if w.shape != like.shape:
                raise ValueError(
                    f"set_weights: entry {k} ({what}) has shape {w.shape}, expected {like.shape}.")
            real(w, k, what)
            return w

        leaves = {name: [None] * n for name in names}
        k = 1 + len(scalars)
        for (name, j), like in zip(entries, current):
            what = f"{name} of variable {_var_name(self._vars[j])!r}"
            if not isinstance(like, Quantized):
                leaves[name][j] = array(k, like, what)
                k += 1
                continue
            codes = array(k, like.codes, what + ", codes")
            info = np.iinfo(like.codes.dtype)
            if not np.issubdtype(codes.dtype, np.integer) or (
                    codes.size and (codes.min() < info.min or codes.max() > info.max)):
                raise ValueError(
                    f"set_weights: entry {k} ({what}, codes) must hold integers in "
                    f"[{info.min}, {info.max}] ({like.codes.dtype}).")
            scales = array(k + 1, like.absmax, what + ", block scales")
            leaves[name][j] = Quantized(jnp.asarray(codes, like.codes.dtype),
                                        jnp.asarray(scales, jnp.float32), like.shape, like.signed)
            k += 2
        for name in names:
            field = getattr(self._state, name)
            if isinstance(field, Packed):
                new[name] = Packed.from_leaves(field.layout, leaves[name])
            else:
                new[name] = tuple(jnp.asarray(w, a.dtype) for w, a in zip(leaves[name], field))
        old = self._state
        try:   # placed like the old state (validated across processes) before it is kept
            self._state = self._state._replace(count=jnp.asarray(int(count), jnp.int32), **new)
            if callable(self._learning_rate):
                self._state = self._state._replace(
                    learning_rate=jnp.asarray(self._learning_rate(self._schedule_step()),
                                              jnp.float32))
            self._state = multihost.from_host_tree(self._state, old, "set_weights")
        except BaseException:
            self._state = old
            raise
        self._iterations = jnp.copy(self._state.count)

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
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            config["learning_rate"] = schedules_lib.deserialize(lr)
        return cls(**config)

    def __repr__(self):
        return f"<kopt.optimizers.{type(self).__name__} name={self.name!r} built={self.built}>"
