"""Shared test helpers: tree comparisons, no-recompile checks, jit and eager variants.

Built on chex where it fits:

- `assert_trees_close` / `assert_trees_equal`: `chex.assert_trees_all_close` /
  `chex.assert_trees_all_equal`, which also check that the trees have one structure (None
  leaves included). `assert_trees_close` compares in float64, so bfloat16 and float16
  leaves are compared by value against float32 or float64 references.
- `jit_max_traces(fn, n=1)`: `jax.jit` of `chex.assert_max_traces(fn, n)`. A retrace (and so a
  recompile) raises at once, naming the function. This replaces reading JAX's private
  compile-cache size on a jitted function the test defines. Two checks keep that private
  counter: a stateful optimizer's own compiled step (`opt._step`) is internal to kopt,
  with no public counterpart, and a restored checkpoint's arrays could recompile through
  their placement without a retrace, which a trace counter cannot see.
- `VARIANTS`: run a test body jitted and eagerly. `chex.variants` needs `chex.TestCase`
  (absltest classes); the suite's tests are pytest functions, so the same two variants are
  a pytest parametrization here.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import chex
import jax
import numpy as np
import pytest


def _as_float64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def assert_trees_close(actual, expected, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    """Same structure, and every leaf close in float64 (`chex.assert_trees_all_close`)."""
    chex.assert_trees_all_close(_as_float64(actual), _as_float64(expected), rtol=rtol, atol=atol)


def assert_trees_equal(actual, expected, *, dtypes: bool = False) -> None:
    """Same structure, and every leaf equal (`chex.assert_trees_all_equal`); with
    `dtypes=True` the leaves' dtypes must match too."""
    if dtypes:
        chex.assert_trees_all_equal_dtypes(actual, expected)
    chex.assert_trees_all_equal(actual, expected)


_JITTED = itertools.count()


def max_traces(fn: Callable[..., Any], n: int = 1) -> Callable[..., Any]:
    """`fn`, raising `AssertionError` when traced more than `n` times (by any jit, kopt's
    own compiled step included): `chex.assert_max_traces` with a counter of its own.

    chex keys its trace counters by where and how `fn` is defined (the definition's stack,
    source and name), so two functions made by one factory, or one test run twice
    (parametrized), would share a counter: each call here gives `fn` a name of its own.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        return fn(*args, **kwargs)

    traced.__name__ = f"{getattr(fn, '__name__', 'fn')}_{next(_JITTED)}"
    return chex.assert_max_traces(traced, n=n)


def jit_max_traces(fn: Callable[..., Any], n: int = 1, **jit_kwargs) -> Callable[..., Any]:
    """`jax.jit(fn)` that raises `AssertionError` when `fn` is traced more than `n` times."""
    return jax.jit(max_traces(fn, n), **jit_kwargs)


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


# `@VARIANTS` gives a test a `variant` argument: `jax.jit` or the identity.
VARIANTS = pytest.mark.parametrize("variant", [jax.jit, _eager], ids=["jit", "eager"])
