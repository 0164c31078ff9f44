"""Different transforms for different parts of the parameter tree.

`partition(transforms, labels)` gives every param leaf a label and runs, for each label,
its own transform on the leaves with that label: Adam with one learning rate for the
encoder, another for the decoder, SGD for the embeddings, nothing at all for a frozen
backbone. `multi_transform` is the same function under optax's name.

Each inner transform sees the whole tree with the other labels' leaves *masked out*: they
are replaced by `MaskedNode()`, an empty pytree node, as `optax.masked` does. The masked
tree keeps the param tree's containers and key paths, but its leaves are only the label's
own, so an inner transform allocates state for those leaves only, and kopt's bucketed
(`Packed`) state packs only them. kopt and optax transforms work alike as inner transforms.

Labels come in three forms:

- a pytree of labels with the structure of params, or a prefix of it (a label on a subtree
  applies to all its leaves): `{"encoder": "adam", "head": {"w": "sgd", "b": "frozen"}}`;
- a callable `params -> labels pytree`, evaluated in `init` and in every `update` (on
  `params`, or on the updates when `update` gets no params);
- `path_labels(rules, default)`, a ready-made such callable that matches regexes against
  each leaf's key path joined with "/" (`"encoder/layers/0/kernel"`).

A label mapped to `None` or to `"frozen"` in `transforms`, or to `frozen()`, freezes its
leaves: their updates are zeros and they have no state at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform, call_update
from kopt.functional.clipping import EmptyState

__all__ = [
    "partition",
    "multi_transform",
    "PartitionState",
    "MaskedNode",
    "path_labels",
    "frozen",
    "set_to_zero",
]

PyTree = Any


class MaskedNode(NamedTuple):
    """Stands in for a leaf that belongs to another label: an empty pytree node.

    Tree functions (`jax.tree.map`, `jax.tree.leaves`) skip it, so a transform that is
    handed a masked tree neither sees nor keeps state for those leaves.
    """


class PartitionState(NamedTuple):
    """The state of a `partition`: its step count and each label's inner state."""

    count: jax.Array              # shape=(), int32: calls to `update`
    inner: dict[Hashable, Any]    # each label's transform state, keyed by label (sorted)


def _is_none(x) -> bool:
    return x is None


def frozen() -> Transform:
    """Freeze params: every update is zero, and there is no state.

    Use it in `partition` (or map a label to `None` or `"frozen"`) to freeze a subtree.
    `None` gradient leaves stay `None`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> tx = kopt.functional.frozen()
      >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
      >>> updates["w"].tolist()
      [0.0, 0.0]

    Reference: `optax.set_to_zero`.
    """

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        zeros = jax.tree.map(lambda g: None if g is None else jnp.zeros_like(g), updates,
                             is_leaf=_is_none)
        return zeros, state

    return Transform(init_fn, update_fn)


set_to_zero = frozen
"""`frozen` under optax's name."""


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def path_labels(rules: Sequence[tuple[str, Hashable]], default: Hashable = None
                ) -> Callable[[PyTree], PyTree]:
    r"""A labels callable for `partition` that matches regexes against key paths.

    Each leaf's key path is joined with "/": dict keys and attribute names as they are,
    sequence indices as numbers (`{"enc": [{"w": ...}]}` has the path `"enc/0/w"`). The
    first rule whose regex is found in the path (`re.search`) gives the leaf's label;
    anchor with `^` and `$` for a full match.

    Args:
      rules: `(regex, label)` pairs, tried in order.
      default: the label of a leaf that no rule matches. Default None: such a leaf raises
        a `ValueError` naming its path.

    Returns:
      A function `tree -> labels pytree` with the structure of `tree`.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> labels = kopt.functional.path_labels([(r"bias$", "no_decay")], default="decay")
      >>> labels({"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}})
      {'dense': {'bias': 'no_decay', 'kernel': 'decay'}}
    """
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TypeError(
            "path_labels: `rules` must be a list of (regex, label) pairs. "
            f"Received: rules={rules!r}")
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
            raise TypeError(
                f"path_labels: rule {i} must be a (regex, label) pair. Received: {rule!r}")
        pattern, label = rule
        try:
            compiled.append((re.compile(pattern), label))
        except (re.error, TypeError) as e:
            raise ValueError(
                f"path_labels: rule {i} has an invalid regex. Received: {pattern!r} ({e})"
            ) from e

    def label_fn(tree):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
        labels = []
        for path, _ in leaves:
            name = _path_str(path)
            for regex, label in compiled:
                if regex.search(name):
                    labels.append(label)
                    break
            else:
                if default is None:
                    raise ValueError(
                        f"path_labels: the leaf at path {name!r} matches none of the regexes "
                        f"{[r.pattern for r, _ in compiled]}; add a rule or pass `default`.")
                labels.append(default)
        return treedef.unflatten(labels)

    return label_fn


def _sorted_labels(labels) -> list:
    try:
        return sorted(labels)
    except TypeError as e:
        raise TypeError(
            "partition: the labels (keys of `transforms`) must be sortable against each "
            f"other, as pytree dict keys are. Received: {list(labels)!r}") from e


def _checked_transforms(transforms) -> dict:
    """`transforms` with None and 'frozen' replaced by `frozen()`, in label order."""
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            "partition: `transforms` must be a non-empty dict from label to transform. "
            f"Received: transforms={transforms!r}")
    txs = {}
    for label in _sorted_labels(transforms):
        tx = transforms[label]
        if tx is None or (isinstance(tx, str) and tx == "frozen"):
            tx = frozen()
        elif not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(
                f"partition: transforms[{label!r}] must be a transform with init/update, "
                f"None or 'frozen'. Received: {tx!r}")
        txs[label] = tx
    return txs


def _leaf_labels(tree, labels, txs) -> tuple[Any, list]:
    """`(treedef, labels)`: `tree` flattened with `None` leaves kept, one label each."""
    treedef = jax.tree.structure(tree, is_leaf=_is_none)
    if treedef.num_leaves == 0:   # no leaf to label (optax.tree.map_params's placeholder)
        return treedef, []
    given = labels(tree) if callable(labels) else labels
    try:   # broadcast a label on a subtree to all the subtree's leaves
        full = jax.tree.map(
            lambda lab, sub: jax.tree.map(lambda _: lab, sub, is_leaf=_is_none),
            given, tree, is_leaf=_is_none)
        flat = treedef.flatten_up_to(full)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "partition: the labels must have the structure of params (or of a prefix "
            f"of it). Params have {treedef}; received labels {given!r}.") from e
    for i, label in enumerate(flat):
        if not isinstance(label, Hashable) or label not in txs:
            paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
            raise ValueError(
                f"partition: the leaf at path {_path_str(paths[i][0])!r} has the label "
                f"{label!r}, which is not a key of `transforms` ({list(txs)}).")
    return treedef, flat


def partition(transforms: Mapping[Hashable, Transform | str | None],
              labels: PyTree | Callable[[PyTree], PyTree]) -> Transform:
    r"""Run a different transform on each labelled part of the parameter tree.

    For each label :math:`k` with transform :math:`T_k` and the leaves :math:`P_k` that
    carry it, :math:`(u_{P_k}, s_k) \leftarrow T_k(g_{P_k}, s_k, \theta_{P_k})`: every
    transform sees only its own leaves (the others are `MaskedNode()`, see the module
    docstring) and keeps state for them only. The updates are merged back into one tree
    like the gradients; `None` gradient leaves are passed on as `None`.

    Args:
      transforms: a dict from label to transform (kopt's or optax's). `None`, `"frozen"`
        or `frozen()` freezes the leaves with that label at no state cost. A label used
        by no leaf is allowed (its transform sees an empty tree).
      labels: a pytree of labels (strings, ints: hashable leaves) with the structure of
        params or a prefix of it, or a callable `params -> labels pytree` such as
        `path_labels(...)`. Every label must be a key of `transforms`.

    Returns:
      A `Transform` whose state is a `PartitionState`:

      - `count`: the number of `update` calls, so `kopt.functional.iteration_count(state)`
        is the number of steps;
      - `inner`: a dict from label to that transform's state, in sorted label order (the
        order JAX gives dicts). `kopt.functional.current_learning_rate(state)` returns
        the rate of the first label in that order whose state has one; read one label's
        rate with `current_learning_rate(state.inner[label])`, and change it, without a
        recompile, with `state._replace(inner={**state.inner, label:
        set_learning_rate(state.inner[label], lr)})`.

    `update` passes `params`, masked the same way, to each inner transform, so those that
    need them (weight decay, EMA, Ftrl, ...) work; it needs `params` when one of them does.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> kf = kopt.functional
      >>> params = {"encoder": {"w": jnp.ones((2, 2))}, "head": {"w": jnp.ones(2)},
      ...           "embed": jnp.ones(3)}
      >>> tx = kf.partition(
      ...     {"slow": kf.adam(1e-4), "fast": kf.adam(1e-2), "frozen": None},
      ...     kf.path_labels([("^encoder/", "slow"), ("^embed", "frozen")], default="fast"))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)
      >>> params = kf.apply_updates(params, updates)
      >>> int(kf.iteration_count(state)), float(updates["embed"][0])
      (1, 0.0)

    Reference: `optax.multi_transform` (here the state is a named `PartitionState` with a
    step count, and a frozen label needs no transform of its own).
    """
    txs = _checked_transforms(transforms)

    def leaf_labels(tree) -> tuple[Any, list]:
        return _leaf_labels(tree, labels, txs)

    def masked(treedef, leaves, flat, label):
        return treedef.unflatten(
            [x if lab == label else MaskedNode() for x, lab in zip(leaves, flat)])

    def init_fn(params):
        treedef, flat = leaf_labels(params)
        leaves = treedef.flatten_up_to(params)
        inner = {label: tx.init(masked(treedef, leaves, flat, label))
                 for label, tx in txs.items()}
        return PartitionState(count=jnp.zeros((), jnp.int32), inner=inner)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, PartitionState):
            raise ValueError(
                "partition: update() received a state of type "
                f"{type(state).__name__}, not a PartitionState; make sure you called init "
                "first and pass its result.")
        if set(state.inner) != set(txs):
            raise ValueError(
                f"partition: the state has the labels {sorted(state.inner)}, but the "
                f"transforms have {list(txs)}; pass the state this transform's init made.")
        treedef, flat = leaf_labels(params if params is not None else updates)
        try:
            g_leaves = treedef.flatten_up_to(updates)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "partition: the gradient tree does not match the params tree. Expected "
                f"{treedef}, received {jax.tree.structure(updates)}.") from e
        p_leaves = None if params is None else treedef.flatten_up_to(params)
        out: list[Any] = [None] * len(g_leaves)
        inner = {}
        for label, tx in txs.items():
            u, inner[label] = call_update(
                tx, masked(treedef, g_leaves, flat, label), state.inner[label],
                None if p_leaves is None else masked(treedef, p_leaves, flat, label),
                extra_args)
            u_leaves = treedef.flatten_up_to(u)
            for i, lab in enumerate(flat):
                if lab == label:
                    out[i] = u_leaves[i]
        return treedef.unflatten(out), PartitionState(count=state.count + 1, inner=inner)

    return Transform(init_fn, update_fn)


multi_transform = partition
"""`partition` under optax's name."""
