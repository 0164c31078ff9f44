"""`Optimizer.minimize`: the gradient and the update in one compiled, donated call.

`minimize(loss_fn, variables, *args)` traces `jax.value_and_grad` of the loss and the
optimizer's step into one function and runs it through `CompiledStep`, as
`apply_gradients` runs the step alone: the same buffer ownership (donated when kopt owns
every buffer, copies of the ones the user still holds), the same all-or-nothing commit,
constraints, guards and options. One call instead of two (`value_and_grad`, then
`apply_gradients`) is what makes an eager stateful loop as fast as a hand-jitted step.

The compiled step is cached on the optimizer per `(loss_fn, has_aux, tree structure of
variables, their order)`; jit adds the shapes and dtypes of `*args`. The learning rate is
in the optimizer state, so setting it (or a schedule stepping) compiles nothing new.
"""

from __future__ import annotations

import warnings

import jax

from kopt.stateful.execution import CompiledStep
from kopt.stateful.facade import _tracing
from kopt.stateful.variable import LOCK, is_variable_like, variable_name

__all__ = ["minimize", "MAX_CACHED_LOSSES"]

MAX_CACHED_LOSSES = 16
"""Compiled `minimize` steps an optimizer keeps; past that the oldest is dropped (with a
warning: a new closure per call recompiles every step)."""


def _flatten(variables, known: dict):
    """`(leaves, treedef)` of `variables`, a variable or a pytree of them (an iterator is
    read into a list). `known` maps `id` to build index for the built variables, which
    are recognised without `is_variable_like` (its `hasattr`s read each variable's value,
    which costs a call into flax per nnx Variable)."""
    if not isinstance(variables, (list, tuple, dict)) and not is_variable_like(variables):
        try:
            variables = list(variables)
        except TypeError:
            pass   # an unregistered object: a leaf, refused below

    def is_leaf(x):
        return id(x) in known or is_variable_like(x)

    leaves, treedef = jax.tree.flatten(variables, is_leaf=is_leaf)
    for i, v in enumerate(leaves):
        if id(v) not in known and not is_variable_like(v):
            raise TypeError(
                "minimize() expects `variables` to be a pytree (list, tuple, dict...) of "
                f"variables (kopt.Variable, keras.Variable); leaf {i} is "
                f"{type(v).__name__}. Wrap arrays with kopt.Variable(array). Received: "
                f"variables={variables!r:.200}")
    if not leaves:
        raise ValueError(f"minimize() received no variables. Received: variables={variables!r}")
    return leaves, treedef


def _order(opt, leaves):
    """For each of `leaves`, its index among the variables `opt` was built with; None when
    they are exactly those, in build order."""
    built = opt._vars
    if len(leaves) == len(built) and all(a is b for a, b in zip(leaves, built)):
        return None
    order = []
    for v in leaves:
        i = opt._index.get(id(v))
        if i is None or built[i] is not v:
            raise ValueError(
                f"minimize(): variable {variable_name(v)!r} is not among the {len(built)} "
                f"variables optimizer {opt.name!r} was built with. Create a new optimizer "
                "for a new set of variables.")
        if i in order:
            raise ValueError(
                f"minimize(): variable {variable_name(v)!r} appears more than once in "
                "`variables`.")
        order.append(i)
    if len(order) != len(built):
        missing = [variable_name(v) for i, v in enumerate(built) if i not in set(order)]
        raise ValueError(
            f"minimize() must be given every variable optimizer {opt.name!r} was built "
            f"with (in any structure or order); missing: {missing}.")
    return tuple(order)


def _split_aux(out, has_aux: bool, loss_fn):
    """`(loss, aux)` from what `loss_fn` returned (checked while tracing)."""
    name = getattr(loss_fn, "__name__", repr(loss_fn))
    if has_aux:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "minimize(has_aux=True): loss_fn must return a pair (loss, aux). Received: "
                f"{type(out).__name__} from loss_fn={name!r}.")
        return out[0], out[1]
    if isinstance(out, (tuple, list)):
        raise TypeError(
            f"minimize(): loss_fn={name!r} returned a {type(out).__name__} of "
            f"{len(out)}; it must return a scalar loss. To return metrics with the loss, "
            "return (loss, aux) and pass has_aux=True.")
    return out, None


def _step_fn(opt, loss_fn, treedef, order, has_aux: bool):
    """The pure step `(values, state, *args) -> (out, values, state, count)`, with `out`
    the loss or `(loss, aux)`. The optimizer's `_loss_step_fn` (which wrappers override,
    e.g. to scale the loss) differentiates a loss of the flat, build-ordered values."""

    def user_loss(values, *a):
        ordered = list(values) if order is None else [values[i] for i in order]
        return _split_aux(loss_fn(jax.tree.unflatten(treedef, ordered), *a), has_aux, loss_fn)

    step = opt._loss_step_fn(lambda values, *a: user_loss(values, *a)[0])
    if not has_aux:
        return step

    def run(values, state, *a):
        # The metrics are a forward pass at the same values, in the same program: XLA
        # merges it with the forward pass of the gradient (common subexpressions).
        aux = user_loss(values, *a)[1]
        loss, values, state, count = step(values, state, *a)
        return (loss, aux), values, state, count

    return run


def _compiled(opt, key, make) -> CompiledStep:
    cache = opt._minimize_cache
    compiled = cache.get(key)
    if compiled is None:
        if len(cache) >= MAX_CACHED_LOSSES:
            del cache[next(iter(cache))]
            warnings.warn(
                f"minimize() on optimizer {opt.name!r} has compiled steps for more than "
                f"{MAX_CACHED_LOSSES} loss functions; the oldest was dropped. Define "
                "loss_fn once and pass data through *args: a new function (lambda, "
                "closure) per call compiles a new step every call.",
                UserWarning, stacklevel=4)
        compiled = cache[key] = CompiledStep(make())
    return compiled


def minimize(self, loss_fn, variables, *args, has_aux: bool = False):
    """Differentiate `loss_fn` and apply the update in one compiled call; returns the loss.

    `loss_fn(values, *args)` receives the variables' current values as a pytree of the
    same structure as `variables` (a list gives a list, a dict a dict, ...), then
    `*args`, and returns a floating-point scalar loss, or `(loss, aux)` with
    `has_aux=True` (`aux`: any pytree of arrays, such as a dict of metrics). `minimize`
    returns the loss (unscaled, under `loss_scale_factor`), or `(loss, aux)`.

    `variables` is a pytree of variables (`kopt.Variable`, `keras.Variable`,
    `kopt.interop.flax.variables(model)`) holding every variable the optimizer was built
    with, in any structure and order; the first call builds it. The step (gradient and
    update fused) is compiled once per `loss_fn`, `has_aux` and structure of `variables`,
    and per shapes and dtypes of `*args`: pass the batch (and anything else that changes)
    through `*args`, which are traced, and define `loss_fn` once. A new closure per call
    compiles a new step per call. Setting `opt.learning_rate` or a schedule stepping
    compiles nothing.

    It follows `apply_gradients` in everything else: the same update (the same result,
    to float32 rounding, as `apply_gradients(zip(grads, variables))` with the gradients
    of `loss_fn`), the same options (clipping, weight decay, EMA, gradient accumulation),
    `iterations`, constraints, the thread lock, and the buffer ownership of the README:
    arrays you still hold stay valid. A failure (in `loss_fn`, a schedule, the step, an
    `assign`) changes nothing. A loss that is not a floating-point scalar raises
    `TypeError` when the step is traced, before anything runs.

    Example:

    >>> import jax.numpy as jnp
    >>> import kopt
    >>> params = {"w": kopt.Variable(jnp.ones(3)), "b": kopt.Variable(0.0)}
    >>> def loss_fn(p, x, y):
    ...     err = x @ p["w"] + p["b"] - y
    ...     return jnp.mean(err ** 2), {"max_err": jnp.max(jnp.abs(err))}
    >>> opt = kopt.optimizers.SGD(learning_rate=0.1)
    >>> x, y = jnp.ones((4, 3)), jnp.zeros(4)
    >>> loss, metrics = opt.minimize(loss_fn, params, x, y, has_aux=True)
    >>> float(loss), float(metrics["max_err"])
    (9.0, 3.0)
    >>> opt.learning_rate = 0.01     # in the state: the next call compiles nothing
    >>> loss, _ = opt.minimize(loss_fn, params, x, y, has_aux=True)
    >>> round(float(loss), 4), int(opt.iterations)
    (0.36, 2)

    With flax.nnx, give `minimize` the model's parameters as variables, split the model
    once, and merge it again inside `loss_fn` (the other state, such as batch-norm
    statistics, passed through `*args`)::

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        treedef = jax.tree.structure(params)
        variables = kopt.interop.flax.variables(model)   # once; same leaf order

        def loss_fn(values, rest, x, y):
            m = nnx.merge(graphdef, jax.tree.unflatten(treedef, values), rest)
            return loss(m(x), y)

        opt.minimize(loss_fn, variables, rest, x, y)     # updates the model in place
    """
    if _tracing():
        raise RuntimeError(
            "minimize() cannot be called inside a JAX transformation (jit, grad, vmap...). "
            "Use kopt.functional (opt.transform) or opt.stateless_apply inside jitted code.")
    if not callable(loss_fn):
        raise TypeError(f"minimize(): loss_fn must be callable. Received: loss_fn={loss_fn!r}")
    if not isinstance(has_aux, bool):
        raise TypeError(f"minimize(): has_aux must be a bool. Received: has_aux={has_aux!r}")
    leaves, treedef = _flatten(variables, self._index)
    with LOCK:
        if not self.built:
            self.build(leaves)
        order = _order(self, leaves)
        compiled = _compiled(self, (loss_fn, has_aux, treedef, order),
                             lambda: _step_fn(self, loss_fn, treedef, order, has_aux))
        return self._run(compiled, *args)
