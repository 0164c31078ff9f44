"""`Facade`: the Keras-visible surface every stateful optimizer shares.

It runs one compiled step over the variables and a state pytree, whatever computes them:
`apply_gradients`/`apply` (checks, then one jitted, donated call that changes everything
or nothing), `stateless_apply`, `state`, `get_weights`/`set_weights`, `weights`,
`built` and `transform`. A subclass says what the step is and where its state lives:

- the engine, `kopt.stateful.optimizer.Optimizer`, runs a functional factory's transform
  with Keras's cross-cutting options, and adds learning rates, configs and the Keras
  weight layouts;
- the wrappers (`LossScaleOptimizer`, `MultiOptimizer`, `TransformOptimizer`) hold their
  inner optimizer(s) or transform and delegate to them; they do not inherit the engine.
  They are registered as virtual subclasses of `Optimizer`, so `isinstance(wrapper,
  kopt.optimizers.Optimizer)` holds, as for Keras's own wrappers.

What a subclass provides: `_transform` and `_state` (a pytree with a `count`),
`_iterations` (a copy of the count), `_state_lent`, `_vars`/`_index` once built, `name`,
`build(variables)`, `iterations`, `_weight_arrays()` and, for Keras's flat form of
`stateless_apply`, `_keras_codec()`.
"""

from __future__ import annotations

import abc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from kopt.functional.base import apply_updates
from kopt.functional.sharding import state_shardings
from kopt.interop.flax import nnx_gradient_hint
from kopt.stateful import multihost
from kopt.stateful import weights as weights_io
from kopt.stateful.execution import CompiledStep, distinct_buffers
from kopt.stateful.optimizer_variable import OptimizerVariable
from kopt.stateful.variable import (
    LOCK,
    Variable,
    is_variable_like,
    read_value,
    variable_name,
    write_value,
)

__all__ = ["Facade", "checked_variables"]


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


_ArrayImpl = type(jnp.zeros(()))


def _as_gradient(g, v):
    """A gradient that is not a `jax.Array`, checked before anything is dispatched: a
    numeric array (numpy, or anything `np.asarray` takes); otherwise an error naming `v`."""
    dtype = getattr(g, "dtype", None)
    if dtype is None or isinstance(g, (str, bytes)):
        raise TypeError(
            f"Gradient for variable {variable_name(v)!r} must be an array; received "
            f"{type(g).__name__}: {g!r:.80}")
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise TypeError(
            f"Gradient for variable {variable_name(v)!r} has dtype {dtype}; expected a numeric "
            "array.")
    if isinstance(g, np.ndarray):
        return jnp.array(g, copy=True)
    return g



def checked_variables(variables) -> list:
    """`variables` as a list, after `build`'s checks: each is variable-like (a
    `kopt.Variable`, `keras.Variable`...) and none appears twice."""
    variables = list(variables)
    for i, v in enumerate(variables):
        if not is_variable_like(v):
            raise TypeError(
                f"build() expects variables (kopt.Variable or keras.Variable); entry {i} "
                f"is {type(v).__name__}. Wrap arrays with kopt.Variable(array)."
            )
    if len({id(v) for v in variables}) != len(variables):
        raise ValueError("build() received the same Variable more than once.")
    return variables


class Facade(metaclass=abc.ABCMeta):
    """The surface shared by kopt's stateful optimizers (see the module docstring)."""

    def _init_facade(self, name: str) -> None:
        """The bookkeeping a subclass that is not the engine starts with."""
        self.name = name
        self._vars = None
        self._index = {}
        self._step = None
        self._minimize_cache = {}
        self._state_lent = False
        self.donate_foreign_variables = False

    def _sync(self) -> None:
        """Follow a change made on an inner optimizer (wrappers); nothing by default."""
        return None

    @abc.abstractmethod
    def build(self, variables) -> None:
        """Create the state for `variables` (all-or-nothing)."""

    @abc.abstractmethod
    def _weight_arrays(self) -> list:
        """The live arrays `get_weights` lists."""

    @property
    def iterations(self) -> OptimizerVariable:
        """The number of applied updates, a read-only variable-like 0-d int32 (`int()`,
        `.value`, `.numpy()`); the engine's can also be assigned."""
        it = self.__dict__.get("_iterations_var")
        if it is None:
            it = self._iterations_var = OptimizerVariable(
                "iteration", f"{self.name}/iteration", read=self._read_iterations)
        return it

    def _read_iterations(self):
        with LOCK:
            if not self.built:
                return jnp.zeros((), jnp.int32)
            return self._iterations

    def finalize_variable_values(self, var_list) -> None:
        """Load what a run keeps for its end (the engine's EMA); nothing by default."""
        del var_list

    def _built_indices(self, var_list, where: str) -> list[int]:
        """The build-order index of each of `var_list`, all of them built variables."""
        idx = []
        for v in var_list:
            i = self._index.get(id(v))
            if i is None or self._vars[i] is not v:
                raise ValueError(
                    f"{where}: variable {variable_name(v)!r} is not among the variables "
                    f"optimizer {self.name!r} was built with.")
            idx.append(i)
        return idx

    def get_weights(self) -> list[np.ndarray]:
        """The arrays of `_weight_arrays()` as numpy copies (empty before build)."""
        with LOCK:
            if not self.built:
                return []
            return [np.array(x) for x in multihost.to_host(self._weight_arrays())]

    @property
    def transform(self):
        """The functional `Transform` this optimizer runs."""
        return self._transform

    def _step_fn(self):
        """The pure step `(values, state, grads) -> (values, state, count)` to compile.

        Wrappers override this (not `_compile`) to change what a step computes.
        """
        tx = self._transform
        names = [variable_name(v) for v in self._vars]

        def step(values, state, grads):
            _check_grads(grads, values, names)
            updates, state = tx.update(grads, state, values)
            # `iterations` gets its own (undonated) copy of the count, so reading it
            # never waits on the device and a held reference stays valid.
            return apply_updates(values, updates), state, jnp.copy(state.count)

        return step

    def _compile(self):
        self._step = CompiledStep(self._step_fn())
        self._minimize_cache.clear()

    @property
    def built(self) -> bool:
        return self._vars is not None

    def _built_with(self, variables) -> bool:
        """True if built with exactly `variables`, False if not built; raises if built
        with another set."""
        if not self.built:
            return False
        if [id(v) for v in variables] == [id(v) for v in self._vars]:
            return True
        raise ValueError(
            f"Optimizer {self.name!r} was already built with {len(self._vars)} variables; "
            "it cannot be rebuilt with a different set. Create a new optimizer.")

    def _on_mesh(self, state):
        return self._placed(state, tuple(read_value(v) for v in self._vars))

    @staticmethod
    def _placed(state, values):
        """`state`, placed where the variables live when they are on a mesh: sharded like
        them, and the rest (counters, buckets, made on one device) replicated, so that
        the compiled step always sees the same input shardings and compiles once."""
        if any(isinstance(getattr(x, "sharding", None), NamedSharding) for x in values):
            state = jax.device_put(state, state_shardings(state, values))
        return distinct_buffers(state)

    # ----------------------------------------------------------------- apply
    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        """Apply `(gradient, variable)` pairs in one compiled step; returns `iterations`.

        Pairs whose gradient is None are skipped (with a warning naming them, as Keras).
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
        """Apply `grads` to `variables` (Keras 3 argument order); returns `iterations`.

        A failure anywhere in the step (the compiled update, a schedule, a variable's
        `assign` or constraint) leaves the variables and the state as they were.
        """
        self._sync()
        if _tracing():
            raise RuntimeError(
                "The stateful optimizer cannot be called inside a JAX transformation "
                "(jit, grad, vmap...). Use kopt.functional (opt.transform) or "
                "opt.stateless_apply(state, grads, values) inside jitted code."
            )
        hint = nnx_gradient_hint(grads)
        grads = list(grads)
        hint = hint or nnx_gradient_hint(grads)
        if hint:
            raise TypeError(f"apply() received nnx.State gradients. {hint}")
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
                f"No gradients provided for any variable: {[variable_name(v) for v in variables]}."
            )
        if any(g is None for g in grads):
            missing = [variable_name(v) for g, v in zip(grads, variables) if g is None]
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. "
                "If using `model.compile()`, did you forget to provide a `loss` argument?",
                UserWarning, stacklevel=3)
        with LOCK:
            if not self.built:
                self.build(variables)
            full = self._full_grads(grads, variables)
            return self._run(self._step, full)

    def _run(self, compiled: CompiledStep, *args):
        """Run `compiled` on the variables and state; commit only if everything succeeds.
        Returns the step's outputs before `(values, state, count)`. Called under LOCK."""
        plain = self._plain()
        values = self._read_values()
        old = None if plain else tuple(values)   # kept to undo a failed `assign`
        *extra, values, state, count = compiled.run(
            values, self._state, args, donate=plain or self.donate_foreign_variables,
            copy_held=plain, state_lent=self._state_lent)
        self._write_values(values, old)
        self._state, self._iterations, self._state_lent = state, count, False
        return extra[0] if extra else self.iterations

    def _plain(self) -> bool:
        """Whether every variable is a `kopt.Variable` (read and written directly)."""
        key = self.__dict__.get("_plain_key")
        if key is None or key[0] is not self._vars:
            key = self._plain_key = (
                self._vars, all(type(v) is Variable and v.constraint is None for v in self._vars))
        return key[1]

    def _read_values(self) -> list:
        """A fresh list of the variables' arrays (see `execution.held_elsewhere`)."""
        if self._plain():   # no per-variable function call on the hot path
            return [v._value for v in self._vars]
        return [read_value(v) for v in self._vars]

    def _write_values(self, new_values, old_values) -> None:
        """Store the step's results, constraints applied; all-or-nothing."""
        if self._plain():
            for v, value in zip(self._vars, new_values):
                v._value = value
            return
        new_values = [
            value if getattr(v, "constraint", None) is None else v.constraint(value)
            for v, value in zip(self._vars, new_values)
        ]
        done = 0
        try:
            for v, value in zip(self._vars, new_values):
                write_value(v, value)
                done += 1
        except BaseException:
            for v, value in zip(self._vars[:done], old_values):
                write_value(v, value)
            raise

    def _full_grads(self, grads, variables):
        """Gradients as a tuple aligned with the built variables (None where absent).

        Shapes and dtypes are checked by `_check_grads` when the step is traced, so a
        call with a known signature does no per-leaf work in Python beyond a type check.
        """
        built = self._vars
        if len(variables) == len(built) and all(a is b for a, b in zip(variables, built)):
            full = list(grads)
        else:
            full = [None] * len(built)
            for g, v in zip(grads, variables):
                i = self._index.get(id(v))
                if i is None or built[i] is not v:
                    raise ValueError(
                        f"Variable {variable_name(v)!r} is not among the "
                        f"{len(built)} variables optimizer {self.name!r} was built with. "
                        "Create a new optimizer for a new set of variables."
                    )
                if full[i] is not None:
                    raise ValueError(
                        f"Variable {variable_name(v)!r} appears more than once in grads_and_vars; "
                        "sum its gradients and pass it once."
                    )
                full[i] = g
        buffers = None
        for i, g in enumerate(full):
            if g is None or type(g) is _ArrayImpl:
                if g is not None:
                    if buffers is None:
                        buffers = {id(v._value) if type(v) is Variable else None for v in built}
                    if id(g) in buffers:   # a variable's own buffer: the step must not consume it
                        full[i] = jnp.copy(g)
                continue
            full[i] = _as_gradient(g, built[i])
        return tuple(full)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """The pure step, for use inside jit. Two forms:

        - kopt's: `stateless_apply(state, grads, values) -> (values, state)`, with
          `state` the pytree `opt.state`;
        - Keras's: `stateless_apply(optimizer_variables, grads, trainable_variables) ->
          (trainable_variables, optimizer_variables)`, with `optimizer_variables` the flat
          list of the values of `opt.variables` (or the variables themselves), as in
          Keras's guide "Writing a training loop from scratch in JAX".

        `grads` and the values are sequences aligned with the built variables. Nothing on
        the optimizer changes: write results back with `opt.state = state` (or
        `var.assign(value)` for each of `opt.variables`) and `v.assign(value)`.
        """
        self._sync()
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {type(self).__name__} must be built (i.e. its "
                "variables must have been created). You can build it via "
                "`optimizer.build(trainable_variables)`.")
        values = tuple(getattr(v, "value", v) for v in trainable_variables)
        grads = tuple(grads)
        if len(values) != len(self._vars) or len(grads) != len(self._vars):
            raise ValueError(
                f"stateless_apply: received {len(grads)} gradients and {len(values)} "
                f"trainable_variables; the optimizer was built with {len(self._vars)} "
                "variables.")
        if isinstance(optimizer_variables, tuple) and hasattr(optimizer_variables, "_fields"):
            if jax.tree.structure(optimizer_variables) != jax.tree.structure(self._state):
                raise ValueError(
                    "stateless_apply: `optimizer_variables` does not have the structure of "
                    "this optimizer's state (opt.state). Received: "
                    f"{type(optimizer_variables).__name__}")
            updates, state = self._transform.update(grads, optimizer_variables, values)
            return list(apply_updates(values, updates)), state
        if not isinstance(optimizer_variables, (list, tuple)):
            raise ValueError(
                "stateless_apply: `optimizer_variables` must be opt.state or a list of the "
                f"values of opt.variables. Received: {type(optimizer_variables).__name__}")
        n, unflatten, flatten = self._keras_codec()
        if len(optimizer_variables) != n:
            raise ValueError(
                "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 "
                f"to {type(self).__name__}().variables. Received list with length "
                f"{len(optimizer_variables)}, but expected {n} variables.")
        state = unflatten([getattr(v, "value", v) for v in optimizer_variables])
        updates, state = self._transform.update(grads, state, values)
        return list(apply_updates(values, updates)), flatten(state)

    # ----------------------------------------------------------------- state
    @property
    def state(self):
        """The functional state pytree (None before build).

        What it returns stays valid: the next step works on a copy of the state instead
        of updating this one in place.
        """
        with LOCK:
            self._state_lent = self._state is not None
            return self._state

    @state.setter
    def state(self, new_state):
        with LOCK:
            if not self.built:
                raise ValueError("Build the optimizer before assigning its state.")
            placed = self._checked_state(new_state)
            self._state, self._iterations = placed, jnp.copy(placed.count)
            self._state_lent = False

    def _checked_state(self, new_state):
        """`new_state` validated against the current state (structure, then each leaf's
        shape and dtype, and the count), copied into buffers kopt owns, and placed."""
        expected = jax.tree.structure(self._state)
        if jax.tree.structure(new_state) != expected:
            raise ValueError(
                "The new state does not have the structure of this optimizer's state. "
                f"Expected {expected}, received {jax.tree.structure(new_state)}."
            )
        paths = jax.tree_util.tree_flatten_with_path(self._state)[0]
        for (path, like), leaf in zip(paths, jax.tree.leaves(new_state)):
            shape, dtype = np.shape(leaf), getattr(leaf, "dtype", None)
            if shape != like.shape or dtype != like.dtype:
                raise ValueError(
                    f"The new state's leaf {jax.tree_util.keystr(path)} has shape {shape} "
                    f"and dtype {dtype}; expected {like.shape} and {like.dtype}.")
        weights_io.check_count(multihost.to_host(new_state.count), "state.count")
        owned = jax.tree.map(lambda x: jnp.array(x, copy=True), new_state)
        return self._on_mesh(owned)

    @property
    def weights(self) -> list[OptimizerVariable]:
        return self.variables

    def set_weights(self, weights) -> None:
        """Load a list produced by `get_weights` (validated in full before any change).

        Arrays are copied: later changes to `weights` do not reach the optimizer. bfloat16
        slots saved with `np.savez` (which stores them as raw 2-byte records, dtype `|V2`)
        load back as they were.
        """
        self._check_weights_list(weights)
        with LOCK:
            state = self._state_from_weights(list(weights))
            self._state, self._iterations = state, jnp.copy(state.count)
            self._state_lent = False

    def _check_weights_list(self, weights) -> None:
        """`set_weights` needs a built optimizer and a list (Keras's message first)."""
        if not self.built:
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has not yet been built. "
                "Please call `optimizer.build(trainable_variables)` to create the optimizer "
                "weights before calling `set_weights()`. (kopt: set_weights() needs a built "
                f"optimizer, and {self.name!r} is not built: call opt.build(variables) first.)")
        if not isinstance(weights, (list, tuple)):
            raise TypeError(
                f"set_weights expects a list of arrays. Received: {type(weights).__name__}")

    def __repr__(self):
        return f"<kopt.optimizers.{type(self).__name__} name={self.name!r} built={self.built}>"
