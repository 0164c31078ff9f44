"""`TransformOptimizer`: the stateful facade over any `(init, update)` transform.

`kopt.optimizers.Optimizer.from_transform(tx)` builds one. `tx` may be a kopt transform
or an optax `GradientTransformation`: anything with `init(params)` and
`update(updates, state, params)`. The facade adds what the stateful optimizers have:
`apply_gradients` (one jitted step, with the variables' buffers and the state donated),
`iterations`, `get_weights`/`set_weights` and `stateless_apply`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.base import Transform, iteration_count
from kopt.stateful import registry
from kopt.stateful.facade import checked_variables
from kopt.stateful.variable import LOCK, read_value
from kopt.stateful.wrapper import Wrapper

__all__ = ["TransformOptimizer", "TransformState"]


class TransformState(NamedTuple):
    """The state of a `TransformOptimizer`: a step count around the wrapped state.

    `count` mirrors the wrapped state's own counter when it has one, and is kept by the
    facade otherwise.
    """

    count: jax.Array   # shape=(), int32: updates applied
    inner: Any         # the wrapped transform's state


def _inner_count(inner) -> jax.Array | None:
    """The wrapped state's own step counter (its first `count` field), or None."""
    try:
        return iteration_count(inner)
    except ValueError:
        return None


def _counted(tx) -> Transform:
    """`tx` with a step counter: its state is `TransformState(count, inner)`.

    If the inner state keeps a count of its own (found by `kopt.functional.iteration_count`,
    as in kopt's transforms and optax's Adam or `inject_hyperparams`), `count` mirrors it;
    otherwise `count` is incremented on every update.
    """

    def init_fn(params):
        inner = tx.init(params)
        own = _inner_count(inner)
        count = jnp.zeros((), jnp.int32) if own is None else jnp.asarray(own, jnp.int32)
        return TransformState(count, inner)

    def update_fn(updates, state, params=None):
        updates, inner = tx.update(updates, state.inner, params)
        own = _inner_count(inner)
        count = state.count + 1 if own is None else jnp.asarray(own, jnp.int32)
        return updates, TransformState(count, inner)

    return Transform(init_fn, update_fn)


def _key_name(key) -> str | None:
    """The field or dict key a pytree path entry names (None for sequence indices)."""
    for attr in ("name", "key"):
        value = getattr(key, attr, None)
        if isinstance(value, str):
            return value
    return None


_INT32_MAX = int(np.iinfo(np.int32).max)


def _iteration_count(x) -> int:
    """Entry 0 of a `set_weights` list, the iteration count: a 0-d integer (or integral
    float) in [0, 2**31 - 1], the range of the int32 counter. Checked before anything
    is converted, so an out-of-range count never fails halfway through a load."""
    count = np.asarray(x)
    ok = count.shape == () and (
        np.issubdtype(count.dtype, np.integer)
        or (np.issubdtype(count.dtype, np.floating) and bool(np.isfinite(count))
            and float(count) == int(count)))
    if ok and 0 <= int(count) <= _INT32_MAX:
        return int(count)
    shown = repr(count.item()) if count.shape == () and count.dtype != object else "an array"
    raise ValueError(
        "set_weights: entry 0 must be the iteration count, a 0-d integer in "
        f"[0, {_INT32_MAX}] (int32). Received {shown} of shape {count.shape}, dtype "
        f"{count.dtype}.")


def _check_real(w: np.ndarray, k: int, what: str) -> None:
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(
            f"set_weights: entry {k} ({what}) has dtype {w.dtype}; expected a real number array.")


class TransformOptimizer(Wrapper):
    """The stateful facade over any `(init, update)` transform, kopt's or optax's.

    Build it with `kopt.optimizers.Optimizer.from_transform(tx, name=None)`:

    - `apply_gradients(zip(grads, variables))`, `apply`, `minimize` and `stateless_apply`
      run `tx.update` and add the updates to the variables, in one jitted, donated step;
    - `state` is a `TransformState(count, inner)`: `inner` is `tx`'s state; `count` is the
      inner state's own counter when it has one (found by
      `kopt.functional.iteration_count`), otherwise a counter the facade keeps;
    - `transform` is the counting transform over `TransformState`
      (`opt.transform.update(grads, opt.state, params)` works), and `inner_transform` is
      `tx` itself;
    - `get_weights()` is `[iterations, *jax.tree.leaves(state.inner)]`: the iteration
      count (a 0-d int32), then the array leaves of the inner state in
      `jax.tree.leaves` order (for an inner state that counts its own steps, its count is
      one of them). `set_weights` loads such a list; entry 0 also sets the inner count;
    - `learning_rate` can be read and set when the inner state holds one as a scalar leaf
      named `learning_rate`: kopt transforms built with a float learning rate, and optax
      transforms built with `optax.inject_hyperparams`. Setting it changes a traced value
      and never recompiles. (A schedule inside the transform recomputes the value on
      every update, so a value set by hand lasts one step.)

    Gradients, clipping, weight decay and the rest are the transform's business: this
    class has no cross-cutting options of its own, and `get_config` is not available (a
    transform is made of closures); checkpoint `state` or `get_weights()` instead. A pair
    whose gradient is None reaches the transform as a `None` leaf: kopt's transforms skip
    it, optax's need a gradient for every variable. It holds the transform and shares only
    the `Facade` with the engine `Optimizer` (of which it is a virtual subclass).

    Example:
      >>> import jax.numpy as jnp, optax, kopt
      >>> w = kopt.Variable(jnp.ones((3,)), name="w")
      >>> opt = kopt.optimizers.Optimizer.from_transform(optax.adam(0.1))
      >>> int(opt.apply_gradients([(jnp.ones((3,)), w)]))
      1
    """

    def __init__(self, transform, name=None):
        if not (callable(getattr(transform, "init", None))
                and callable(getattr(transform, "update", None))):
            raise TypeError(
                "from_transform expects a transform with `init(params)` and "
                f"`update(updates, state, params)`, such as kopt.functional.adam(...) or "
                f"optax.adam(...). Received: {transform!r}"
            )
        super().__init__(name if name is not None else "transformoptimizer")
        self._inner = transform
        self._transform = self._make_transform()
        self._state = self._iterations = None

    _mask = None   # no weight decay of its own (a MultiOptimizer around it reads these two)

    def _make_transform(self, mask=None):
        del mask
        return _counted(self._inner)

    def build(self, variables) -> None:
        """Create the state, `TransformState(count, tx.init(values))` (all-or-nothing)."""
        variables = checked_variables(variables)
        with LOCK:
            if self._built_with(variables):
                return
            values = tuple(read_value(v) for v in variables)
            state = self._placed(self._transform.init(values), values)   # nothing set yet
            self._vars = tuple(variables)
            self._index = {id(v): i for i, v in enumerate(variables)}
            self._state, self._iterations = state, jnp.copy(state.count)
            self._state_lent = False
            self._compile()

    @property
    def inner_transform(self):
        """The wrapped `(init, update)` transform, as given to `from_transform`."""
        return self._inner

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        raise NotImplementedError(
            "A TransformOptimizer has no weight decay of its own; mask the decay inside the "
            "wrapped transform (e.g. weight_decay_mask= of kopt.functional, or optax.masked)."
        )

    # ----------------------------------------------------------------- learning rate
    def _learning_rate_index(self) -> int:
        """Position, in `jax.tree.leaves(state.inner)`, of the first scalar leaf named
        `learning_rate` (a NamedTuple field or a dict key)."""
        if not self.built:
            raise ValueError(
                f"Optimizer {self.name!r} reads its learning rate from the wrapped "
                "transform's state: build it first with opt.build(variables).")
        with_paths = jax.tree_util.tree_flatten_with_path(self._state.inner)[0]
        for i, (path, leaf) in enumerate(with_paths):
            if path and _key_name(path[-1]) == "learning_rate" and np.shape(leaf) == ():
                return i
        raise ValueError(
            f"The state of the transform wrapped by optimizer {self.name!r} holds no "
            "`learning_rate`, so it cannot be read or set. Use a kopt transform with a float "
            "learning rate, or wrap an optax optimizer in optax.inject_hyperparams, e.g. "
            "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )

    @property
    def learning_rate(self):
        """The learning rate held in the wrapped transform's state (a 0-d numpy array)."""
        i = self._learning_rate_index()
        return np.asarray(jax.tree.leaves(self._state.inner)[i])

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(value):
            raise TypeError(
                "A TransformOptimizer cannot take a new schedule: build the wrapped transform "
                f"with it instead. Received: learning_rate={value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"learning_rate must be a number. Received: {value!r}") from e
        if not number >= 0:
            raise ValueError(f"`learning_rate` must be >= 0. Received: learning_rate={value}")
        i = self._learning_rate_index()
        leaves, treedef = jax.tree.flatten(self._state.inner)
        leaves[i] = jnp.full_like(leaves[i], number)   # same dtype and weak type: no retrace
        self._state = self._state._replace(inner=jax.tree.unflatten(treedef, leaves))

    # ----------------------------------------------------------------- weights
    @property
    def variables(self) -> list[jax.Array]:
        """The arrays of `get_weights()`, in its order (snapshots)."""
        return self._weight_arrays()

    def _keras_codec(self):
        """Keras's flat form of `variables`, for `stateless_apply`: `[count, *leaves]`."""
        treedef = jax.tree.structure(self._state.inner)

        def unflatten(flat):
            return TransformState(jnp.asarray(flat[0], jnp.int32),
                                  jax.tree.unflatten(treedef, list(flat[1:])))

        return (1 + treedef.num_leaves, unflatten,
                lambda state: [state.count, *jax.tree.leaves(state.inner)])

    def _weight_arrays(self) -> list[jax.Array]:
        """`[iterations, *jax.tree.leaves(state.inner)]` (snapshots), as `get_weights`."""
        if not self.built:
            return []
        return [jnp.copy(self._state.count)] + [
            jnp.copy(x) for x in jax.tree.leaves(self._state.inner)]

    def get_weights(self) -> list[np.ndarray]:
        """`[iterations, *jax.tree.leaves(state.inner)]` as numpy arrays.

        Entry 0 is the iteration count, a 0-d int32; the rest are the array leaves of the
        wrapped transform's state in `jax.tree.leaves` (flatten) order.
        """
        if not self.built:
            return []
        return [np.asarray(x) for x in self.variables]

    def set_weights(self, weights) -> None:
        """Load a list produced by `get_weights` (validated in full before any change).

        Entry 0 sets `iterations` and, where the inner state counts its own steps, that
        count too.
        """
        self._check_weights_list(weights)
        leaves, treedef = jax.tree.flatten(self._state.inner)
        if len(weights) != 1 + len(leaves):
            raise ValueError(
                f"set_weights expected a list of {1 + len(leaves)} arrays (iterations, then "
                f"the {len(leaves)} array leaves of the wrapped transform's state); received "
                f"{len(weights)}."
            )
        count = _iteration_count(weights[0])
        new = []
        for k, (w, like) in enumerate(zip(weights[1:], leaves), start=1):
            w = np.asarray(w)
            if w.shape != like.shape:
                raise ValueError(
                    f"set_weights: entry {k} (state leaf {k - 1}) has shape {w.shape}, "
                    f"expected {like.shape}.")
            _check_real(w, k, f"state leaf {k - 1}")
            new.append(jnp.array(w, like.dtype))   # a copy: later writes to `w` do not leak in
        own = _inner_count(self._state.inner)
        for i, leaf in enumerate(leaves):
            if leaf is own:
                new[i] = jnp.asarray(count, leaf.dtype)
        self._state = TransformState(jnp.asarray(count, jnp.int32),
                                     jax.tree.unflatten(treedef, new))
        self._iterations = jnp.copy(self._state.count)

    # ----------------------------------------------------------------- config and pickling
    def get_config(self):
        raise NotImplementedError(
            f"Optimizer {self.name!r} wraps an arbitrary transform, which has no config. "
            "Save its state (opt.state or opt.get_weights()) and rebuild it with "
            "Optimizer.from_transform(tx)."
        )

    @classmethod
    def from_config(cls, config):
        raise NotImplementedError(
            "A TransformOptimizer cannot be rebuilt from a config; use "
            "kopt.optimizers.Optimizer.from_transform(tx).")

    def __getstate__(self):
        raise TypeError(
            f"Optimizer {self.name!r} cannot be pickled: the transform it wraps is made of "
            "closures. Save opt.state (e.g. with orbax) or opt.get_weights(), and restore it "
            "into Optimizer.from_transform(tx) built on the same variables."
        )


registry.register(TransformOptimizer, "internal")
