"""Keras 3 (JAX backend): a kopt optimizer inside `model.compile` and `model.fit`.

  import keras, kopt
  import kopt.interop.keras

  model.compile(loss="mse", optimizer=kopt.interop.keras.wrap(kopt.optimizers.Adam(0.1)))
  model.fit(x, y, epochs=3)

`wrap(opt)` returns a `KoptOptimizer`, a `keras.optimizers.Optimizer` whose update is
`opt`'s functional transform (`opt.transform`). Keras's JAX trainer compiles a stateless
training step and calls `optimizer.stateless_apply(optimizer_variables, grads,
trainable_variables)` inside it, so kopt's state must live in Keras optimizer variables:
the wrapper keeps one per array leaf of `opt.state`, after Keras's `iteration` counter.
`fit` therefore runs kopt's exact update inside Keras's compiled step, with no host
round trip.

The wrapper and the kopt optimizer share one state, and the Keras variables are its
source of truth. The kopt optimizer `opt` is brought up to date whenever Keras writes
those variables back: after every eager `apply`/`apply_gradients`, after each
`train_on_batch`, at the end of every `fit` epoch, when a callback reads `self.model`
(Keras's JAX trainer syncs its state then), and when a saved model is loaded. So after
`fit` or `train_on_batch`, `opt.get_weights()`, `opt.state` and `int(opt.iterations)`
give the trained values. The sync shares the Keras variables' buffers (no copy). In the
middle of a `fit` epoch Keras holds the state in its compiled step and consumes the old
buffers, so read `opt` there only after a sync (in a callback, through `self.model`, as
for Keras's own optimizers). Train through the wrapper (or Keras) once wrapped: a direct
`opt.apply_gradients` would update `opt` without the Keras variables.

For a `MultiOptimizer`, the wrapper's `optimizers` lists a view of each inner optimizer
whose `learning_rate` reads and sets that optimizer's rate in the shared state, so
Keras's `LearningRateScheduler` and `ReduceLROnPlateau` callbacks change each inner rate,
as they do for `keras.optimizers.MultiOptimizer`.

Everything the update does (clipping, weight decay, EMA, gradient accumulation, the
learning-rate schedule) is kopt's: the Keras side of the wrapper has none of these options
set, so nothing is applied twice. `loss_scale_factor` is mirrored, since Keras's trainer
scales the loss and kopt's transform divides the gradients. Under a `mixed_float16`
policy `compile` wraps the optimizer in a `keras.optimizers.LossScaleOptimizer`, whose
stateless step (the one `fit` runs) calls this one. `model.save` and
`keras.saving.load_model` keep the optimizer and its state (the class is registered
with Keras as `kopt>KoptOptimizer`; a `TransformOptimizer` has no config to save).

This module imports Keras; `kopt` itself never does.
"""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import keras

from kopt.functional.base import iteration_count
from kopt.functional.buckets import Packed
from kopt.functional.quantize import Quantized
from kopt.stateful import serialization
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer, _times
from kopt.stateful.multi_optimizer import MultiOptimizer
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.variable import LOCK, variable_name

__all__ = ["wrap", "KoptOptimizer"]


def _value(x):
    """The array of `x`, or of a variable-like view of one (`.value`)."""
    return getattr(x, "value", x)


def _check_backend() -> None:
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "kopt.interop.keras needs the JAX backend of Keras 3; this Keras runs on "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=jax before importing keras."
        )


def _sanitize(text: str) -> str:
    name = "_".join(filter(None, ("".join(c if c.isalnum() else " " for c in text)).split()))
    return name or "state"


def _path_name(path) -> str:
    """`(GetAttrKey('m'), SequenceKey(0))` -> `m_0`."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return _sanitize("_".join(parts))


def _state_names(state, variables) -> list[str]:
    """A Keras variable name for each leaf of `state`, in `jax.tree.leaves` order.

    Per-variable slots are named after their variable, as Keras names its slots
    (`dense_kernel_m`); bucketed slots and everything else after their state path.
    """
    names = []
    nodes = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, Packed))
    for path, node in nodes[0]:
        field = _path_name(path)
        if isinstance(node, Packed):
            names += [f"{field}_bucket_{b}" for b in range(len(node.buckets))]
            for i, leaf in enumerate(node.leaves):
                if leaf is None:
                    continue
                base = f"{_sanitize(variable_name(variables[i]))}_{field}"
                # A block-wise quantised slot is two arrays: codes and scales.
                names += ([base + "_codes", base + "_scales"] if isinstance(leaf, Quantized)
                          else [base])
        else:
            names.append(field)
    return names


class _StateVariable(keras.Variable):
    """A Keras optimizer variable holding one leaf of kopt's state.

    It tells its `KoptOptimizer` when Keras writes it (Keras's JAX trainer assigns every
    optimizer variable when it syncs its state back, and so does loading a saved model),
    so the kopt optimizer can follow once all of them are current.
    """

    _kopt_owner = None   # a weakref to the KoptOptimizer, set once built

    def _direct_assign(self, value):
        super()._direct_assign(value)
        owner = self._kopt_owner() if self._kopt_owner is not None else None
        if owner is not None:
            owner._state_variable_assigned(self)


class _InnerOptimizerView:
    """One inner optimizer of a wrapped `MultiOptimizer`, as Keras's callbacks see it.

    `learning_rate` reads and sets the inner optimizer's rate in the state the Keras
    variables hold; other attributes are the inner optimizer's (synced first).
    """

    def __init__(self, wrapper: KoptOptimizer, optimizer: Optimizer):
        object.__setattr__(self, "_wrapper", wrapper)
        object.__setattr__(self, "_optimizer", optimizer)

    @property
    def name(self) -> str:
        return self._optimizer.name

    @property
    def learning_rate(self):
        self._wrapper._pull()
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._wrapper._pull()
        self._optimizer.learning_rate = value
        if self._wrapper.built:
            self._wrapper._push()

    @property
    def optimizer(self) -> Optimizer:
        """The kopt inner optimizer itself (synced)."""
        self._wrapper._pull()
        return self._optimizer

    def __getattr__(self, key):
        if key.startswith("__") or key in ("_wrapper", "_optimizer"):
            raise AttributeError(key)   # copy/pickle probing a half-made view
        return getattr(self.optimizer, key)

    def __setattr__(self, key, value):
        if key == "learning_rate":
            object.__setattr__(self, key, value)   # the property above
            return
        raise AttributeError(
            f"Only `learning_rate` can be set through this view of {self._optimizer.name!r}; "
            f"set {key!r} on the kopt optimizer before wrapping it.")

    def __repr__(self):
        return f"<kopt.interop.keras view of {self._optimizer!r}>"


def _transform_hint(optimizer) -> str:
    """A hint when `optimizer` is a bare `(init, update)` transform, else ''."""
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        return (" It looks like a bare (init, update) transform (an optax "
                "GradientTransformation or a kopt.functional transform): give it the "
                "stateful facade first, wrap(kopt.optimizers.Optimizer.from_transform(tx)).")
    return ""


@keras.saving.register_keras_serializable(package="kopt")
class KoptOptimizer(keras.optimizers.Optimizer):
    """A `keras.optimizers.Optimizer` that runs a kopt optimizer's update.

    Build it with `kopt.interop.keras.wrap(opt)`. See the module docstring for how the
    state is kept.

    Args:
      optimizer: a kopt stateful optimizer (`kopt.optimizers.Adam(...)`,
        `Optimizer.from_transform(tx)`, ...), or a name or config for
        `kopt.optimizers.get`.
      name: the Keras name; defaults to the kopt optimizer's.
    """

    def __init__(self, optimizer, name=None):
        _check_backend()
        if isinstance(optimizer, (str, dict)):
            optimizer = serialization.get(optimizer)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "kopt.interop.keras.wrap expects a kopt optimizer (e.g. "
                f"kopt.optimizers.Adam(0.1)) or its name.{_transform_hint(optimizer)} "
                f"Received: optimizer={optimizer!r} of type {type(optimizer).__name__}")
        # The learning rate lives in kopt's state; Keras's own machinery never reads it
        # because the `learning_rate` property is overridden below.
        super().__init__(learning_rate=lambda: self.learning_rate,
                         name=name if name is not None else optimizer.name,
                         loss_scale_factor=optimizer.loss_scale_factor)
        self._kopt = optimizer
        self._state_vars = []
        self._treedef = None
        self._pending = set()    # state variables Keras wrote since kopt last followed
        self._pushing = False
        self._views = None
        self._scale_index = None   # which state variable holds a LossScaleOptimizer's scale

    # ----------------------------------------------------------------- state sync
    @property
    def kopt_optimizer(self) -> Optimizer:
        """The wrapped kopt optimizer, its state synced from this optimizer's variables."""
        self._pull()
        return self._kopt

    def _pull(self) -> None:
        """Keras variables -> the kopt optimizer's state (the buffers are shared)."""
        if not self.built:
            return
        values = [v._value for v in self._state_vars]
        if any(x is None for x in values):
            return   # mid-epoch, Keras's trainer holds the state; it syncs back later
        self._pending.clear()
        state = jax.tree.unflatten(self._treedef, values)
        kopt = self._kopt
        with LOCK:
            # The buffers stay the Keras variables': shared, not copied, and marked as
            # lent, so a kopt step copies them before consuming any (Keras still holds
            # them). `opt.state = ...` would copy the whole state on every sync.
            kopt._state = state
            kopt._iterations = jnp.copy(state.count)
            kopt._state_lent = True

    def _push(self) -> None:
        """The kopt optimizer's state -> Keras variables."""
        self._pushing = True
        try:
            for var, leaf in zip(self._state_vars, jax.tree.leaves(self._kopt.state)):
                var.assign(leaf)
            self._iterations.assign(jnp.asarray(_value(self._kopt.iterations),
                                                self._iterations.dtype))
        finally:
            self._pushing = False
        self._pending.clear()

    def _state_variable_assigned(self, var) -> None:
        """Keras wrote `var`: once it has written all of them, the kopt optimizer follows."""
        if self._pushing:
            return
        self._pending.add(id(var))
        if len(self._pending) == len(self._state_vars):
            self._pull()

    @property
    def optimizers(self) -> list:
        """For a wrapped `MultiOptimizer` (also inside a `LossScaleOptimizer`): a view of
        each inner optimizer, whose `learning_rate` reads and sets that optimizer's rate,
        as `keras.optimizers.MultiOptimizer.optimizers`. Other optimizers have no
        `optimizers` (an `AttributeError`, so `hasattr` is False, as Keras's callbacks
        expect)."""
        multi = self._kopt
        while not isinstance(multi, MultiOptimizer) and "inner_optimizer" in vars(multi):
            multi = multi.inner_optimizer
        if not isinstance(multi, MultiOptimizer):
            raise AttributeError(
                f"{type(self).__name__} {self.name!r} wraps a single "
                f"{type(self._kopt).__name__}, which has no `optimizers`; only a wrapped "
                "MultiOptimizer has them.")
        known = {id(v._optimizer): v for v in (self._views or [])}
        self._views = [known.get(id(o)) or _InnerOptimizerView(self, o)
                       for o in multi.optimizers]
        return list(self._views)

    def build(self, variables):
        """Build kopt's state for `variables` and hold it in Keras optimizer variables.

        A kopt optimizer that was already built on these variables keeps its state (a
        resumed run continues from it).
        """
        if self.built:
            return
        variables = list(variables)
        self._kopt.build(variables)
        super().build(variables)
        leaves, self._treedef = jax.tree.flatten(self._kopt.state)
        owner = weakref.ref(self)
        for leaf, name in zip(leaves, _state_names(self._kopt.state, variables)):
            with keras.name_scope(self.name, caller=self):
                var = _StateVariable(initializer=leaf, shape=leaf.shape, dtype=leaf.dtype,
                                     trainable=False, aggregation="none", name=name)
            self._track_variable(var)
            var._kopt_owner = owner
            self._state_vars.append(var)
        if isinstance(self._kopt, LossScaleOptimizer):
            paths = jax.tree_util.tree_flatten_with_path(self._kopt.state)[0]
            self._scale_index = next(i for i, (path, _) in enumerate(paths)
                                     if getattr(path[0], "name", None) == "dynamic_scale")
        self._iterations.assign(jnp.asarray(_value(self._kopt.iterations),
                                            self._iterations.dtype))

    # ----------------------------------------------------------------- updates
    def scale_loss(self, loss):
        """What Keras's trainer differentiates: `loss` times a `LossScaleOptimizer`'s
        current dynamic scale (read from the state inside the compiled step), or times
        `loss_scale_factor`."""
        if self._scale_index is not None:
            return _times(loss, self._state_vars[self._scale_index].value)
        if not self.built and isinstance(self._kopt, LossScaleOptimizer):
            return self._kopt.scale_loss(loss)
        return super().scale_loss(loss)

    def apply(self, grads, trainable_variables=None):
        """Eager update: kopt's compiled, donated step on the Keras variables."""
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "apply(grads) without variables needs a built optimizer: call "
                    "optimizer.build(trainable_variables) first.")
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        self._pull()
        self._kopt.apply(list(grads), trainable_variables)
        self._push()
        for var in trainable_variables:
            if getattr(var, "constraint", None) is not None:
                var.assign(var.constraint(var))

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """The pure update Keras's JAX trainer calls inside `jax.jit`.

        `optimizer_variables` and the returned list follow `self.variables`; the
        trainable values follow the variables this optimizer was built with.
        """
        name = type(self).__name__   # Keras's texts, then kopt's
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {name} must be built (i.e. its variables must "
                "have been created). You can build it via "
                "`optimizer.build(trainable_variables)`.")
        if len(optimizer_variables) != len(self.variables):
            raise ValueError(
                "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 "
                f"to {name}().variables. Received list with length "
                f"{len(optimizer_variables)}, but expected {len(self.variables)} variables. "
                f"(kopt: Keras's iteration counter, then one per array leaf of the kopt "
                f"optimizer's state.)")
        if len(trainable_variables) != len(self._trainable_variables):
            raise ValueError(
                "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 "
                "to the trainable variables list that the optimizer was built with. Received "
                f"len(trainable_variables) == {len(trainable_variables)} whereas the "
                f"optimizer was built with {len(self._trainable_variables)} variables.")
        # A wrapping LossScaleOptimizer passes our Keras variables themselves, inside a
        # StatelessScope that maps them to their values.
        current = {id(v): x.value if isinstance(x, keras.Variable) else x
                   for v, x in zip(self.variables, optimizer_variables)}
        state = jax.tree.unflatten(self._treedef, [current[id(v)] for v in self._state_vars])
        new_values, state = self._kopt.stateless_apply(state, list(grads),
                                                       list(trainable_variables))
        new_values = [
            var.constraint(x) if getattr(var, "constraint", None) is not None else x
            for var, x in zip(self._trainable_variables, new_values)
        ]
        current.update(zip(map(id, self._state_vars), jax.tree.leaves(state)))
        current[id(self._iterations)] = jnp.asarray(iteration_count(state),
                                                    self._iterations.dtype)
        return new_values, [current[id(v)] for v in self.variables]

    def finalize_variable_values(self, var_list):
        """At the end of `fit`: sync kopt's state and, with `use_ema`, load the averages."""
        self._pull()
        self._kopt.finalize_variable_values(var_list)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Forwarded to the kopt optimizer (before it is built)."""
        self._kopt.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    # ----------------------------------------------------------------- learning rate
    @property
    def learning_rate(self):
        """The kopt optimizer's learning rate (a 0-d float32 numpy array)."""
        self._pull()
        return self._kopt.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._pull()
        self._kopt.learning_rate = value
        if self.built:
            self._push()

    # ----------------------------------------------------------------- weights and config
    def get_weights(self):
        """kopt's `get_weights()` list (the legacy tf.keras layout)."""
        return self.kopt_optimizer.get_weights()

    def set_weights(self, weights):
        """Load kopt's `get_weights()` layout, which is also the legacy tf.keras one."""
        self._pull()
        self._kopt.set_weights(weights)
        self._push()

    def get_config(self):
        return {"name": self.name, "optimizer": serialization.serialize(self._kopt)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        del custom_objects
        config = dict(config)
        return cls(serialization.deserialize(config.pop("optimizer")), **config)


def wrap(optimizer, name=None) -> KoptOptimizer:
    """A `keras.optimizers.Optimizer` running `optimizer`'s kopt update.

    For `model.compile(optimizer=kopt.interop.keras.wrap(kopt.optimizers.Adam(0.1)))`.
    `optimizer` is a kopt optimizer, or a name or config for `kopt.optimizers.get`.
    """
    return KoptOptimizer(optimizer, name=name)
