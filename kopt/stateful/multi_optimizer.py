"""`MultiOptimizer`: different stateful optimizers for different variables, in one step.

As `keras.optimizers.MultiOptimizer` (Keras 3), it takes an `OptimizerMap` (variable
path regexes to optimizers, plus a default) or a callable `variable -> optimizer`; kopt
also takes a list of `(optimizer, variables)` pairs. Each inner optimizer keeps its own
state and stays usable on its own (`multi.optimizers[k].learning_rate`,
`.iterations`, `.get_weights()`), but `apply_gradients` runs ONE compiled step over all
of them: the functional `kopt.functional.partition` of the inner optimizers' transforms.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kopt.functional.base import apply_updates
from kopt.functional.partition import MaskedNode, PartitionState, partition
from kopt.functional.validation import validate_loss_scale_factor
from kopt.stateful import registry
from kopt.stateful.facade import _check_grads, checked_variables
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.serialization import check_config_tree, deserialize, serialize
from kopt.stateful.transform_optimizer import _iteration_count
from kopt.stateful.variable import LOCK, is_variable_like, variable_name
from kopt.stateful.wrapper import Wrapper

__all__ = ["MultiOptimizer", "OptimizerMap"]

# Keras's messages, then kopt's.
_LR_GET_MESSAGE = (
    "Learning rate cannot be accessed on a MultiOptimizer. Access the learning rate on the "
    "individual sub-optimizers instead. A MultiOptimizer has no learning rate of its own: "
    "each inner optimizer has one. Read it on `multi.optimizers[i].learning_rate`."
)
_LR_SET_MESSAGE = (
    "Learning rate cannot be set on a MultiOptimizer. Set the learning rate on the "
    "individual sub-optimizers instead. A MultiOptimizer has no learning rate of its own: "
    "each inner optimizer has one. Set it on `multi.optimizers[i].learning_rate`."
)


def _check_type(opt, where: str) -> None:
    if not isinstance(opt, Optimizer):
        raise ValueError(f"{where} must be a kopt optimizer instance. Received: {opt!r}")


def _nesting_error(opt, where: str, setitem: bool = False) -> ValueError | None:
    """The error for a wrapper inside a MultiOptimizer, with Keras's message, or None.

    Keras's sentence is the one of `MultiOptimizer.build`, or with `setitem` the one of
    `OptimizerMap.__setitem__`.
    """
    if isinstance(opt, MultiOptimizer):
        kind = "MultiOptimizer"
    elif "inner_optimizer" in vars(opt):   # LossScaleOptimizer, or any wrapper like it
        kind = "LossScaleOptimizer"
    else:
        return None
    text = (f"optimizer cannot be {kind}." if setitem
            else f"{kind} cannot be used inside an MultiOptimizer.")
    hint = ("wrap the MultiOptimizer in the LossScaleOptimizer instead" if kind ==
            "LossScaleOptimizer" else "list its inner optimizers in this one")
    return ValueError(f"{text} {where} is a {type(opt).__name__} ({opt.name!r}); {hint}. "
                      f"Received: {opt!r}")


def _check_inner(opt, where: str) -> None:
    """Type and nesting: what Keras checks when a MultiOptimizer is built."""
    _check_type(opt, where)
    err = _nesting_error(opt, where)
    if err is not None:
        raise err


def _set_loss_scale_factor(opt: Optimizer, value) -> None:
    """Set an inner optimizer's `loss_scale_factor`, remaking its transform if it changed."""
    if isinstance(opt, MultiOptimizer) or "inner_optimizer" in vars(opt):
        return   # a nested wrapper: refused when the MultiOptimizer is built
    if opt.loss_scale_factor == value and (opt.loss_scale_factor is None) == (value is None):
        return
    opt.loss_scale_factor = value
    opt._transform = opt._make_transform(opt._mask)
    if opt.built:
        opt._compile()


class OptimizerMap(MutableMapping):
    """Variable paths to optimizers, as `keras.optimizers.OptimizerMap`.

    A variable's key is its `path` (Keras variables) or its `name` (`kopt.Variable`).
    Lookup: an exact key first; otherwise every key is a regex tried with `re.fullmatch`
    (so `"encoder/.*"` covers the encoder's variables); more than one match is a
    `ValueError`; no match gives `default_optimizer`.

    Args:
      default_optimizer: the optimizer of variables that no key matches. Unlike Keras, it
        may be None: such a variable is then an error when the `MultiOptimizer` is built.
      optimizer_map: an optional dict from key to optimizer.
    """

    def __init__(self, default_optimizer: Optimizer | None = None,
                 optimizer_map: dict[str, Optimizer] | None = None):
        if default_optimizer is not None and not isinstance(default_optimizer, Optimizer):
            raise TypeError(   # Keras's type and text, then kopt's
                "default_optimizer must be a Keras Optimizer instance. Received: "
                f"{default_optimizer} (kopt: a kopt optimizer such as kopt.optimizers.SGD(0.1), "
                f"or None; received {default_optimizer!r}).")
        if optimizer_map is not None and not isinstance(optimizer_map, dict):
            raise TypeError(f"optimizer_map must be a dict. Received: {optimizer_map!r}")
        self._default_optimizer = default_optimizer
        self._optimizer_map: dict[str, Optimizer] = {}
        for key, opt in (optimizer_map or {}).items():
            # As Keras: a nested wrapper given here is refused when a MultiOptimizer
            # is built with it (assigning one with `map[key] = opt` is refused at once).
            self._put(key, opt, nested_ok=True)

    @property
    def default_optimizer(self) -> Optimizer | None:
        return self._default_optimizer

    def __getitem__(self, key: str) -> Optimizer:
        if key in self._optimizer_map:
            return self._optimizer_map[key]
        matches = [p for p in self._optimizer_map if re.fullmatch(p, key)]
        if len(matches) > 1:
            raise ValueError(
                f"Multiple optimizers assigned to variable {key}. Variable {key!r} matches "
                f"more than one key of the OptimizerMap: {matches}. Each variable must have "
                "exactly one optimizer.")
        if matches:
            return self._optimizer_map[matches[0]]
        if self._default_optimizer is None:
            raise KeyError(key)
        return self._default_optimizer

    def __setitem__(self, key: str, optimizer: Optimizer) -> None:
        self._put(key, optimizer, nested_ok=False)

    def _put(self, key: str, optimizer: Optimizer, nested_ok: bool) -> None:
        # Keras's texts first, then kopt's details.
        if isinstance(key, str) and key in self._optimizer_map:
            raise ValueError(
                f"'{key}' already exists in the OptimizerMap with value "
                f"{self._optimizer_map[key]}. Please make sure to not use duplicated keys. "
                f"(kopt: the key {key!r} is already in the OptimizerMap; keys must be unique.)")
        if not isinstance(key, str):
            raise ValueError(f"An OptimizerMap key must be a string. Received: {key!r}")
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"The OptimizerMap key {key!r} is not a valid regex: {e}") from e
        where = f"The optimizer for key {key!r}"
        if not nested_ok and not isinstance(optimizer, Optimizer):
            raise ValueError(
                f"optimizer must be a Keras Optimizer instance. Received: {optimizer} "
                f"(kopt: {where} must be a kopt optimizer instance; received {optimizer!r}).")
        _check_type(optimizer, where)
        err = None if nested_ok else _nesting_error(optimizer, where, setitem=True)
        if err is not None:
            raise err
        self._optimizer_map[key] = optimizer

    def __delitem__(self, key: str) -> None:
        del self._optimizer_map[key]

    def __len__(self) -> int:
        return len(self._optimizer_map)

    def __iter__(self):
        return iter(self._optimizer_map)

    def __call__(self, variable) -> Optimizer:
        """The optimizer of `variable`, looked up by its path or name."""
        return self[variable_name(variable)]

    def get_config(self) -> dict[str, Any]:
        default = self._default_optimizer
        return {"default_optimizer": None if default is None else serialize(default),
                "optimizer_map": {k: serialize(o) for k, o in self._optimizer_map.items()}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OptimizerMap:
        if not isinstance(config, dict):
            raise TypeError(f"OptimizerMap.from_config expects a dict. Received: {config!r}"[:300])
        check_config_tree(config)
        unknown = [k for k in config if k not in ("default_optimizer", "optimizer_map")]
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} in the OptimizerMap config; expected "
                "'default_optimizer' and 'optimizer_map'.")
        default = config.get("default_optimizer")
        entries = config.get("optimizer_map") or {}
        if not isinstance(entries, dict):
            raise TypeError(
                "The OptimizerMap config's 'optimizer_map' must be a dict {regex: optimizer "
                f"config}}. Received: optimizer_map={entries!r}"[:300])
        return cls(None if default is None else deserialize(default),
                   {k: deserialize(o) for k, o in entries.items()})


class MultiOptimizer(Wrapper):
    """Different optimizers for different variables, applied in one compiled step.

    Each variable goes to one inner optimizer, which updates it by its own rule (its
    docstring gives the maths). `apply_gradients` runs a single jitted, donated function
    that is `kopt.functional.partition` of the inner optimizers' transforms: every inner
    transform sees only its own variables, and the result equals applying each inner
    optimizer to its own variables.

    Args:
      optimizer_map: which optimizer updates which variable. One of:
        - an `OptimizerMap` (regex keys matched against variable paths or names, and a
          default optimizer); a plain dict `{regex: optimizer}` is read as an
          `OptimizerMap` without default;
        - a callable `variable -> optimizer`, as in Keras;
        - a list of `(optimizer, variables)` pairs (kopt only): a variable in two pairs is
          a `ValueError` here, and one in no pair when the optimizer is built.
        A variable that no optimizer claims is a `ValueError` at build. As in Keras, a
        `LossScaleOptimizer` or `MultiOptimizer` among the inner optimizers is refused
        when the MultiOptimizer is built, with Keras's message (and at once by
        `OptimizerMap.__setitem__`).
      loss_scale_factor: every inner optimizer's `loss_scale_factor`, as in Keras: it
        is set on them here (None included), on any met at build (a callable), and
        again whenever `multi.loss_scale_factor` is set (a `LossScaleOptimizer` around
        this one sets it to None, so the gradients are unscaled once). Default None.
      name: default "multioptimizer".

    Attributes and behaviour:
      - `optimizers`: the inner optimizers, in the order of the map's values (then the
        default), or of first use for a callable, or of the pairs. They stay live views:
        their `learning_rate` can be read and set (no recompile), their `iterations` and
        `get_weights()` follow the shared step.
      - `iterations`: the number of `apply_gradients` calls. Each inner optimizer counts
        its own real updates (fewer under its own gradient accumulation).
      - `learning_rate`: reading or setting it raises `AttributeError`, as in Keras.
      - `get_weights()`: `[iterations]`, then each inner optimizer's `get_weights()`
        without its iteration count, in `optimizers` order (those that update no
        variable add nothing). `set_weights` loads that list; each inner optimizer's
        count is then set to `iterations` (or to the real updates that many calls make,
        under gradient accumulation).
      - `get_config()` needs an `OptimizerMap` (a callable or variable list cannot be
        serialised); `from_config` rebuilds it with new inner optimizers.
      - `exclude_from_weight_decay` (before build) is passed on to the inner optimizers
        that are not built yet.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> from kopt.stateful.multi_optimizer import MultiOptimizer, OptimizerMap
      >>> enc = kopt.Variable(jnp.ones((3,)), name="encoder/kernel")
      >>> head = kopt.Variable(jnp.ones((2,)), name="head/kernel")
      >>> opt = MultiOptimizer(OptimizerMap(kopt.optimizers.SGD(0.1),
      ...                                   {"encoder/.*": kopt.optimizers.Adam(1e-3)}))
      >>> int(opt.apply_gradients([(jnp.ones(3), enc), (jnp.ones(2), head)]))
      1
      >>> [o.name for o in opt.optimizers]
      ['adam', 'sgd']

    It holds its inner optimizers, which keep their state, and delegates to them; it
    shares only the `Facade` with the engine `Optimizer`, of which it is a virtual
    subclass.

    Reference: `keras.optimizers.MultiOptimizer`; `kopt.functional.partition`.
    """

    def __init__(self, optimizer_map, loss_scale_factor=None, name=None, **kwargs):
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}.")
        validate_loss_scale_factor(loss_scale_factor)
        super().__init__(name if name is not None else "multioptimizer")
        self._inner: list[Optimizer] = []
        self._pairs: list[tuple[Optimizer, list]] | None = None
        self._active = None          # per used inner optimizer, set by build
        self._exclusions: list[tuple[list, list]] = []
        if isinstance(optimizer_map, dict):
            optimizer_map = OptimizerMap(None, optimizer_map)
        if isinstance(optimizer_map, OptimizerMap):
            for opt in [*optimizer_map.values(), optimizer_map.default_optimizer]:
                if opt is not None and not any(opt is o for o in self._inner):
                    self._inner.append(opt)
        elif isinstance(optimizer_map, (list, tuple)):
            self._pairs = self._check_pairs(optimizer_map)
            for opt, _ in self._pairs:
                if not any(opt is o for o in self._inner):
                    self._inner.append(opt)
        elif not callable(optimizer_map):
            raise TypeError(
                "optimizer_map must be an OptimizerMap, a dict {regex: optimizer}, a callable "
                f"variable -> optimizer, or a list of (optimizer, variables) pairs. "
                f"Received: {optimizer_map!r}")
        self._optimizer_map = optimizer_map
        self.loss_scale_factor = loss_scale_factor   # set on every inner optimizer
        self._transform = None   # `partition` of the inner transforms, made at build

    @property
    def loss_scale_factor(self):
        """The inner optimizers' common `loss_scale_factor` (see the class docstring)."""
        return self.__dict__.get("_loss_scale_factor")

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        validate_loss_scale_factor(value)
        self.__dict__["_loss_scale_factor"] = value
        for opt in self.__dict__.get("_inner", ()):
            _set_loss_scale_factor(opt, value)
        if self.__dict__.get("_active") is not None:   # built: remake the joint step
            self._setup()

    @staticmethod
    def _check_pairs(pairs):
        out, owner = [], {}
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise TypeError(
                    f"optimizer_map entry {i} must be an (optimizer, variables) pair. "
                    f"Received: {pair!r}")
            opt, variables = pair
            _check_type(opt, f"The optimizer of optimizer_map entry {i}")
            variables = [variables] if is_variable_like(variables) else list(variables)
            for v in variables:
                if not is_variable_like(v):
                    raise TypeError(
                        f"optimizer_map entry {i} holds {type(v).__name__}, not a variable.")
                if id(v) in owner:
                    raise ValueError(
                        f"Variable {variable_name(v)!r} is claimed by two optimizers "
                        f"({owner[id(v)][1].name!r} and {opt.name!r}); give it to one only.")
                owner[id(v)] = (v, opt)
            out.append((opt, variables))
        return out

    # ----------------------------------------------------------------- assignment
    def _optimizer_for(self, v) -> Optimizer:
        m = self._optimizer_map
        if self._pairs is not None:
            opt = next((o for o, vs in self._pairs if any(v is x for x in vs)), None)
        elif isinstance(m, OptimizerMap):
            try:
                opt = m(v)
            except KeyError:
                opt = None
        else:
            opt = m(v)
        if opt is None:
            why = ("it is in no (optimizer, variables) pair" if self._pairs is not None else
                   "it matches no key of the OptimizerMap, which has no default_optimizer"
                   if isinstance(m, OptimizerMap) else "the optimizer_map callable returned None")
            raise ValueError(
                f"No optimizer is assigned to variable {variable_name(v)!r}: {why}. Every "
                "variable needs exactly one optimizer.")
        if not isinstance(opt, Optimizer):
            raise ValueError(
                f"Optimizer for variable {variable_name(v)} is not an Optimizer instance. It must "
                f"be a kopt optimizer. Received: {opt!r}")
        _check_inner(opt, f"The optimizer for variable {variable_name(v)!r}")
        return opt

    @property
    def optimizers(self) -> list[Optimizer]:
        """The inner optimizers (see the class docstring for their order)."""
        return list(self._inner)

    def build(self, variables) -> None:
        """Assign each variable to its optimizer, build those, and create the joint step."""
        with LOCK:
            self._build(list(variables))

    def _build(self, variables) -> None:
        variables = checked_variables(variables)
        if not variables:
            raise ValueError("build() received no variables.")
        if self._built_with(variables):
            return
        # Everything that can fail is checked before any inner optimizer changes.
        inner = list(self._inner)
        owned: list[list[int]] = [[] for _ in inner]
        labels = []
        for i, v in enumerate(variables):
            opt = self._optimizer_for(v)
            k = next((j for j, o in enumerate(inner) if o is opt), None)
            if k is None:
                k = len(inner)
                inner.append(opt)
                owned.append([])
            owned[k].append(i)
            labels.append(k)
        for opt, idx in zip(inner, owned):
            mine = [variables[i] for i in idx]
            if idx and opt.built and [id(v) for v in opt._vars] != [id(v) for v in mine]:
                raise ValueError(
                    f"Inner optimizer {opt.name!r} is already built with other variables "
                    f"than the {len(mine)} this MultiOptimizer gives it; use a new one.")
        self._inner = inner
        for opt, idx in zip(inner, owned):
            if not idx:
                continue
            _set_loss_scale_factor(opt, self.loss_scale_factor)
            if not opt.built:
                for var_list, var_names in self._exclusions:
                    try:
                        opt.exclude_from_weight_decay(var_list=var_list, var_names=var_names)
                    except NotImplementedError:   # no weight decay to exclude from
                        pass
            opt.build([variables[i] for i in idx])
        self._vars = tuple(variables)
        self._index = {id(v): i for i, v in enumerate(variables)}
        self._labels = tuple(labels)
        self._active = [(k, opt, idx) for k, (opt, idx) in enumerate(zip(inner, owned)) if idx]
        self._count = jnp.zeros((), jnp.int32)
        try:
            self._setup()
        except Exception:
            self._vars, self._active = None, None
            raise
        self._iterations = jnp.copy(self._count)
        self._state_lent = False

    def _setup(self):
        """(Re)make the partition transform, the state views and the compiled step."""
        self._transform = self._make_transform()
        self._inner_transforms = [opt._transform for _, opt, _ in self._active]
        shapes = jax.eval_shape(self._transform.init, tuple(v.value for v in self._vars))
        self._treedefs = {}
        for k, opt, _ in self._active:
            masked, compact = shapes.inner[k], opt._state
            if [(x.shape, x.dtype) for x in jax.tree.leaves(masked)] != [
                    (x.shape, x.dtype) for x in jax.tree.leaves(compact)]:
                raise TypeError(
                    f"Inner optimizer {opt.name!r} keeps state that depends on which other "
                    "variables exist, so it cannot be part of a MultiOptimizer.")
            self._treedefs[k] = (jax.tree.structure(masked), jax.tree.structure(compact))
        self._compile()

    def _make_transform(self, mask=None):
        """`partition` of the inner optimizers' transforms; None before `build`."""
        del mask   # weight-decay masks are the inner optimizers'
        if self.__dict__.get("_active") is None:
            return None
        n = len(self._vars)
        transforms = {}
        for k, opt, idx in self._active:
            inner_mask = opt._mask
            if inner_mask is not None:   # the inner mask, spread over the masked tree
                spread: list[Any] = [MaskedNode()] * n
                for i, m in zip(idx, inner_mask):
                    spread[i] = m
                inner_mask = tuple(spread)
            transforms[k] = opt._make_transform(inner_mask)
        return partition(transforms, self._labels)

    def _step_fn(self):
        tx = self._transform
        names = [variable_name(v) for v in self._vars]

        def step(values, state, grads):
            _check_grads(grads, values, names)
            updates, state = tx.update(grads, state, values)
            # Copies of every count, so held `iterations` stay valid.
            counts = (jnp.copy(state.count),
                      tuple(jnp.copy(s.count) for s in state.inner.values()))
            return apply_updates(values, updates), state, counts

        return step

    def _sync(self):
        """Remake the step if an inner optimizer changed its transform (a new schedule)."""
        if self.built and any(opt._transform is not t for (_, opt, _), t in
                              zip(self._active, self._inner_transforms)):
            self._setup()

    # ----------------------------------------------------------------- state
    # The inner optimizers own their state; the partition state is assembled from it
    # (same buffers, re-wrapped for the masked tree) and written back after each step.
    @property
    def _state(self):
        if self.__dict__.get("_active") is None:
            return None
        inner = {}
        for k, opt, _ in self._active:
            masked, _compact = self._treedefs[k]
            inner[k] = masked.unflatten(jax.tree.leaves(opt._state))
        return PartitionState(count=self._count, inner=inner)

    @_state.setter
    def _state(self, state):
        if state is None:   # the base constructor's initial value
            return
        self._count = state.count
        for k, opt, _ in self._active:
            _masked, compact = self._treedefs[k]
            opt._state = compact.unflatten(jax.tree.leaves(state.inner[k]))

    @property
    def _iterations(self):
        return self.__dict__.get("_own_iterations")

    @_iterations.setter
    def _iterations(self, value):
        if isinstance(value, tuple):   # from the compiled step: (own, inner counts)
            value, inner = value
            for (_, opt, _), c in zip(self._active, inner):
                opt._iterations = c
        elif self._active is not None:
            for _, opt, _ in self._active:
                opt._iterations = jnp.copy(opt._state.count)
        self.__dict__["_own_iterations"] = value

    @property
    def _state_lent(self):
        """Whether the state (the multi's or an inner optimizer's part) was handed out and
        must be copied before a step consumes it."""
        return bool(self.__dict__.get("_own_lent")) or any(
            getattr(opt, "_state_lent", False) for _, opt, _ in (self.__dict__.get("_active") or ()))

    @_state_lent.setter
    def _state_lent(self, value):
        self.__dict__["_own_lent"] = bool(value)
        if not value:
            for _, opt, _ in self.__dict__.get("_active") or ():
                opt._state_lent = False

    def __getstate__(self):
        """Pickle the configuration and the count; the inner optimizers pickle their state."""
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("_transform", "_step", "_minimize_cache", "_index",
                          "_own_iterations", "_treedefs", "_inner_transforms",
                          "_iterations_var", "_plain_key", "_own_lent")}
        if self.built:
            d["_count"] = np.asarray(self._count)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._minimize_cache = {}
        self._index = {}
        self._transform = None
        if self.built:
            self._index = {id(v): i for i, v in enumerate(self._vars)}
            self._count = jnp.asarray(self._count)
            self._setup()
            self._iterations = jnp.copy(self._count)

    # ----------------------------------------------------------------- apply
    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Exclude variables from weight decay in whichever inner optimizer gets them."""
        if self.built:
            raise ValueError(
                "exclude_from_weight_decay() must be called before the optimizer is built.")
        self._exclusions.append((list(var_list or []), list(var_names or [])))

    def finalize_variable_values(self, var_list) -> None:
        """Pass each variable to its inner optimizer's `finalize_variable_values` (EMA)."""
        if not self.built:
            return
        groups: dict[int, list] = {}
        var_list = list(var_list)
        for v, i in zip(var_list, self._built_indices(var_list, "finalize_variable_values")):
            groups.setdefault(self._labels[i], []).append(v)
        for k, vs in groups.items():
            self._inner[k].finalize_variable_values(vs)

    # ----------------------------------------------------------------- learning rate
    @property
    def learning_rate(self):
        raise AttributeError(_LR_GET_MESSAGE)

    @learning_rate.setter
    def learning_rate(self, value):
        raise AttributeError(f"{_LR_SET_MESSAGE} Received: learning_rate={value!r}")

    def __getattr__(self, key):
        if key == "learning_rate":   # keep the message when the property raises
            raise AttributeError(_LR_GET_MESSAGE)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    # ----------------------------------------------------------------- weights
    @property
    def variables(self) -> list:
        """`[iterations]`, then each inner optimizer's `variables` (its own iteration
        count first), in `optimizers` order, as Keras's MultiOptimizer lists them
        (Keras also lists an unused learning rate of the MultiOptimizer's own)."""
        with LOCK:
            if not self.built:
                return []
            out = [self.iterations]
            for _, opt, _ in self._active:
                out.extend(opt.variables)
            return out

    def _keras_codec(self):
        codecs = [(k, opt._keras_codec()) for k, opt, _ in self._active]
        n = 1 + sum(c[0] for _, c in codecs)

        def unflatten(flat):
            flat = list(flat)
            inner, pos = {}, 1
            for k, (m, unflat, _) in codecs:
                compact = unflat(flat[pos:pos + m])
                pos += m
                inner[k] = self._treedefs[k][0].unflatten(jax.tree.leaves(compact))
            return PartitionState(count=jnp.asarray(flat[0], jnp.int32), inner=inner)

        def flatten(state):
            out = [state.count]
            for k, (_, _, flat) in codecs:
                compact = self._treedefs[k][1].unflatten(jax.tree.leaves(state.inner[k]))
                out.extend(flat(compact))
            return out

        return n, unflatten, flatten

    def _weight_arrays(self) -> list:
        out = [self._count]
        for _, opt, _ in self._active:
            out.extend(opt._weight_arrays()[1:])
        return out

    def get_weights(self) -> list[np.ndarray]:
        """`[iterations, *weights of optimizers[0] without its count, *of optimizers[1], ...]`.

        Each inner optimizer contributes its own `get_weights()` list minus the leading
        iteration count (see `kopt.optimizers.Optimizer.get_weights` for that layout),
        in `optimizers` order; inner optimizers that update no variable contribute nothing.
        """
        return super().get_weights()

    def _state_from_weights(self, weights):
        """The state `set_weights(weights)` loads (nothing is changed here). Each inner
        optimizer's count is set to the iterations (or to the real updates that many calls
        make, under its gradient accumulation)."""
        sizes = [len(opt._weight_arrays()) - 1 for _, opt, _ in self._active]
        if len(weights) != 1 + sum(sizes):
            layout = ", ".join(f"{n} for {opt.name!r}" for n, (_, opt, _) in zip(sizes, self._active))
            raise ValueError(
                f"set_weights expected a list of {1 + sum(sizes)} arrays (iterations, then "
                f"{layout}); received {len(weights)}.")
        count = _iteration_count(weights[0])
        inner, start = {}, 1
        for n, (k, opt, _) in zip(sizes, self._active):
            steps = getattr(opt, "gradient_accumulation_steps", None)
            inner_count = count // steps if steps else count
            try:
                compact = opt._state_from_weights(
                    [np.asarray(inner_count, np.int32), *weights[start:start + n]])
            except (ValueError, TypeError) as e:
                raise type(e)(
                    f"set_weights: entries {start} to {start + n - 1} are inner optimizer "
                    f"{opt.name!r}'s (its own entries 1 to {n}): {e}") from e
            inner[k] = self._treedefs[k][0].unflatten(jax.tree.leaves(compact))
            start += n
        return PartitionState(count=jnp.asarray(count, jnp.int32), inner=inner)

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        if not isinstance(self._optimizer_map, OptimizerMap):
            raise ValueError(
                "get_config: only a MultiOptimizer built from an OptimizerMap (or a dict) can "
                "be serialised; a callable or a list of variables cannot. Received "
                f"optimizer_map={self._optimizer_map!r}")
        return {"name": self.name, "optimizer_map": self._optimizer_map.get_config(),
                "loss_scale_factor": self.loss_scale_factor}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiOptimizer:
        if not isinstance(config, dict):
            raise TypeError(f"from_config expects a dict. Received: {config!r}"[:300])
        check_config_tree(config)
        config = dict(config)
        if not isinstance(config.get("optimizer_map"), dict):
            raise TypeError(
                "A MultiOptimizer config needs an 'optimizer_map' entry holding an "
                "OptimizerMap config (a dict). Received: "
                f"optimizer_map={config.get('optimizer_map')!r}"[:300])
        config["optimizer_map"] = OptimizerMap.from_config(config["optimizer_map"])
        return cls(**config)



registry.register(MultiOptimizer, "config_only")
