"""How the stateful facade runs a compiled step without ever losing what it was given.

A step is a pure function `(values, state, *args) -> (*extra, values, state, count)`,
jitted twice: once with the variables' buffers and the state donated (the fast path,
updating in place), once without. `CompiledStep.run` picks per call:

- **Donated** when kopt owns every buffer it would consume: the variables are
  `kopt.Variable`s, no array the user still holds is among them (a buffer the user still
  references is copied first; `held_elsewhere` finds them by reference count), and nothing
  in the step can fail after dispatch.
- **Kept** (not donated) when the step contains a host callback (a schedule or a loss that
  calls back into Python can raise while the step runs), when `jax_debug_nans` or
  `jax_debug_infs` is on (JAX re-runs a failing step op by op, which needs its inputs),
  or when the variables are foreign (`keras.Variable`, nnx) and the user has not opted in
  to donating them. A kept step that may fail is waited for before anything is written, so
  an error leaves the variables and the state exactly as they were.

`LOCK` serialises every step, state read and state write of every optimizer, and the
reads of `kopt.Variable` (see `kopt.stateful.variable`): a thread never sees a buffer
donated under it.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp

from kopt.stateful.variable import LOCK, Variable

__all__ = ["LOCK", "CompiledStep", "copy_tree", "distinct_buffers", "has_host_callback",
           "held_elsewhere"]


def _subjaxprs(value):
    if hasattr(value, "eqns"):   # a Jaxpr
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):   # a ClosedJaxpr
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def has_host_callback(jaxpr) -> bool:
    """Whether `jaxpr` (or any jaxpr nested in it) calls back into Python."""
    stack = list(_subjaxprs(jaxpr))
    while stack:
        j = stack.pop()
        for eqn in j.eqns:
            if "callback" in eqn.primitive.name:
                return True
            for param in eqn.params.values():
                stack.extend(_subjaxprs(param))
    return False


def _debug_checks_on() -> bool:
    return bool(jax.config.jax_debug_nans or jax.config.jax_debug_infs)


def _refcounts(values) -> list[int]:
    getrc = sys.getrefcount
    return [getrc(x) for x in values]


def _baseline() -> int:
    probe = Variable(0.0)
    values = [probe._value]
    return _refcounts(values)[0]


_BASELINE = _baseline()
"""References to a variable's buffer when only the Variable and the values list hold it."""


def held_elsewhere(values: list) -> list[int]:
    """Indices of the buffers in `values` (read from Variables into this fresh list) that
    something besides their Variable references: an array the user kept from `.value`."""
    return [i for i, n in enumerate(_refcounts(values)) if n > _BASELINE]


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def copy_tree(tree):
    """Fresh buffers with the same values (one compiled call)."""
    return _copy(tree)


def distinct_buffers(tree):
    """`tree` with every array leaf its own buffer: a leaf that repeats an earlier one (an
    `init` that puts one zero in several counters) is copied, since the step donates the
    state and XLA refuses to donate one buffer twice."""
    seen: set[int] = set()

    def own(x):
        if not isinstance(x, jax.Array):
            return x
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x

    return jax.tree.map(own, tree)


class CompiledStep:
    """A pure step jitted with and without donating its first two arguments."""

    def __init__(self, fn):
        self.fn = fn
        self.donated = jax.jit(fn, donate_argnums=(0, 1))
        self.kept = jax.jit(fn)
        self._callbacks: bool | None = None   # decided on the first call

    def _cache_size(self) -> int:
        """How many executables the two jits hold (for no-recompile checks)."""
        return self.donated._cache_size() + self.kept._cache_size()

    def may_fail_while_running(self, args) -> bool:
        """Whether an error can be raised after dispatch: host callbacks in the step, or
        JAX's NaN/Inf checks."""
        if _debug_checks_on():
            return True
        if self._callbacks is None:
            # Tracing through the donated jit warms its trace cache for the call below.
            self._callbacks = has_host_callback(self.donated.trace(*args).jaxpr)
        return self._callbacks

    def run(self, values: list, state, args: tuple, *, donate: bool, copy_held: bool,
            state_lent: bool) -> Any:
        """Run the step. `values` is a fresh list read from the variables, referenced
        nowhere else by the caller; `donate` says their buffers may be consumed, and
        `copy_held` that those the user still references (`held_elsewhere`) must be copied
        first; `state_lent` says the state was handed out and must be copied before being
        donated."""
        if self.may_fail_while_running((tuple(values), state) + args):
            out = self.kept(tuple(values), state, *args)
            jax.block_until_ready(out)   # raise here, before anything is written
            return out
        if not donate:
            return self.kept(tuple(values), state, *args)
        for i in held_elsewhere(values) if copy_held else ():
            values[i] = jnp.copy(values[i])
        if state_lent:
            state = copy_tree(state)
        return self.donated(tuple(values), state, *args)
