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

The wrapper and the kopt optimizer share one state, held by the Keras variables. The
kopt optimizer is brought up to date after every eager `apply`/`apply_gradients` and
when `fit` ends (`finalize_variable_values`, which also applies kopt's `use_ema`);
`kopt_optimizer`, `learning_rate`, `get_weights` and `set_weights` sync before they read.
In between (during `fit`, or after `train_on_batch`) Keras holds the state in buffers of
its own and donates the old ones, so read it through the wrapper, not through `opt`.

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

import jax
import jax.numpy as jnp
import keras

from kopt.functional.base import iteration_count
from kopt.functional.buckets import Packed
from kopt.functional.quantize import Quantized
from kopt.stateful import registry
from kopt.stateful.optimizer import Optimizer, _var_name

__all__ = ["wrap", "KoptOptimizer"]


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
                base = f"{_sanitize(_var_name(variables[i]))}_{field}"
                # A block-wise quantised slot is two arrays: codes and scales.
                names += ([base + "_codes", base + "_scales"] if isinstance(leaf, Quantized)
                          else [base])
        else:
            names.append(field)
    return names


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
            optimizer = registry.get(optimizer)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "kopt.interop.keras.wrap expects a kopt optimizer (e.g. "
                f"kopt.optimizers.Adam(0.1)) or its name. Received: {optimizer!r}")
        # The learning rate lives in kopt's state; Keras's own machinery never reads it
        # because the `learning_rate` property is overridden below.
        super().__init__(learning_rate=lambda: self.learning_rate,
                         name=name if name is not None else optimizer.name,
                         loss_scale_factor=optimizer.loss_scale_factor)
        self._kopt = optimizer
        self._state_vars = []
        self._treedef = None

    # ----------------------------------------------------------------- state sync
    @property
    def kopt_optimizer(self) -> Optimizer:
        """The wrapped kopt optimizer, its state synced from this optimizer's variables."""
        self._pull()
        return self._kopt

    def _pull(self) -> None:
        """Keras variables -> the kopt optimizer's state."""
        if self.built:
            self._kopt.state = jax.tree.unflatten(
                self._treedef, [v.value for v in self._state_vars])

    def _push(self) -> None:
        """The kopt optimizer's state -> Keras variables."""
        for var, leaf in zip(self._state_vars, jax.tree.leaves(self._kopt.state)):
            var.assign(leaf)
        self._iterations.assign(jnp.asarray(self._kopt.iterations, self._iterations.dtype))

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
        for leaf, name in zip(leaves, _state_names(self._kopt.state, variables)):
            var = self.add_variable(shape=leaf.shape, dtype=leaf.dtype, name=name)
            var.assign(leaf)
            self._state_vars.append(var)
        self._iterations.assign(jnp.asarray(self._kopt.iterations, self._iterations.dtype))

    # ----------------------------------------------------------------- updates
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
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {type(self).__name__} must be built: call "
                "optimizer.build(trainable_variables) first.")
        if len(optimizer_variables) != len(self.variables):
            raise ValueError(
                f"stateless_apply expected {len(self.variables)} optimizer variables (one "
                f"per entry of optimizer.variables); received {len(optimizer_variables)}.")
        if len(trainable_variables) != len(self._trainable_variables):
            raise ValueError(
                f"stateless_apply expected {len(self._trainable_variables)} trainable "
                f"values, as built; received {len(trainable_variables)}.")
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
        return {"name": self.name, "optimizer": registry.serialize(self._kopt)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        del custom_objects
        config = dict(config)
        return cls(registry.deserialize(config.pop("optimizer")), **config)


def wrap(optimizer, name=None) -> KoptOptimizer:
    """A `keras.optimizers.Optimizer` running `optimizer`'s kopt update.

    For `model.compile(optimizer=kopt.interop.keras.wrap(kopt.optimizers.Adam(0.1)))`.
    `optimizer` is a kopt optimizer, or a name or config for `kopt.optimizers.get`.
    """
    return KoptOptimizer(optimizer, name=name)
