"""Muon, as `keras.optimizers.Muon`: orthogonalised momentum for matrices, AdamW otherwise."""

from __future__ import annotations

import functools
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kopt.functional.adam import adam_rule
from kopt.functional.base import Transform
from kopt.functional.buckets import Packed, state_dtype_for
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.options import Options, with_options
from kopt.functional.quantize import explicit_axes, in_auto_axes
from kopt.functional.validation import (
    check_nonnegative,
    check_number,
    check_unit_interval,
    concrete,
    is_traced,
    maybe_nonzero,
)
from kopt.functional.weight_decay import resolve_mask, validate_weight_decay

__all__ = ["muon", "MuonState", "orthogonalize", "use_adamw", "muon_branches", "param_path",
           "MAX_NS_STEPS"]

MAX_NS_STEPS = 100
"""The largest `ns_steps` accepted: each iteration is two matrix products per Muon matrix,
so the work a config can ask for is bounded."""


class MuonState(NamedTuple):
    count: jax.Array             # shape=(), int32: updates applied
    learning_rate: jax.Array     # shape=(), float32: rate of the next update
    m: Packed                    # momentum (both branches), like params
    v: Packed                    # AdamW second moment, like params; shape (0,) on Muon leaves
    ema: Packed | None = None          # EMA of the params (use_ema), like params
    accum: Packed | None = None        # gradient sum (gradient_accumulation_steps)
    micro_step: jax.Array | None = None  # int32 raw calls (gradient_accumulation_steps)


def use_adamw(path: str, ndim: int, exclude_layers=None, exclude_embeddings: bool = True) -> bool:
    """Keras's choice of branch: True (AdamW) unless the variable is a matrix that is not
    an embedding (with `exclude_embeddings`) and matches none of the `exclude_layers`
    regexes (`re.search` on `path`)."""
    if ndim != 2:
        return True
    if exclude_embeddings and "embedding" in path.lower():
        return True
    return any(re.search(pattern, path) for pattern in exclude_layers or ())


def param_path(path) -> str:
    """The path Muon matches `exclude_layers` against: the keys of `path` (a JAX key path)
    joined by "/", without a final `.value` attribute, which is how an `nnx.Variable`
    holds its array. So params from `nnx.split` (`"dense/kernel/value"` as JAX sees them),
    from `nnx.state` under `nnx.Optimizer` and plain dicts all give `"dense/kernel"`."""
    path = tuple(path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _branch_flags(params, exclude_layers, exclude_embeddings, adam_mask):
    """`(adam flag per leaf, treedef)`: True where the leaf takes the AdamW branch."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    marked = (False,) * len(with_paths)
    if adam_mask is not None:
        mask = adam_mask(params) if callable(adam_mask) else adam_mask
        try:
            marked = tuple(bool(x) for x in treedef.flatten_up_to(mask))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"adam_mask must have the structure of params ({treedef}). "
                f"Received: {mask!r}") from e
    adam = tuple(
        marked[i] or use_adamw(param_path(path), jnp.ndim(p), exclude_layers, exclude_embeddings)
        for i, (path, p) in enumerate(with_paths)
    )
    return adam, treedef


def muon_branches(params, exclude_layers: list[str] | None = None,
                  exclude_embeddings: bool = True, adam_mask: Any = None):
    """The branch each param leaf takes in `muon(...)` with these arguments: a pytree like
    `params` of "muon" and "adamw".

    Use it to check `exclude_layers` before training: the paths are those of
    `param_path` (keys joined by "/", an `nnx.Variable`'s `.value` dropped), so the answer
    is the same for `nnx.split` params, `nnx.state(model, nnx.Param)` and plain dicts.

    Example:
      >>> import jax.numpy as jnp, kopt
      >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
      ...           "head": {"kernel": jnp.ones((3, 2))}}
      >>> kopt.functional.muon_branches(params, exclude_layers=["head"])
      {'dense': {'bias': 'adamw', 'kernel': 'muon'}, 'head': {'kernel': 'adamw'}}
    """
    _check_exclude_layers(exclude_layers)
    if not isinstance(exclude_embeddings, bool):
        raise ValueError("`exclude_embeddings` must be a bool. Received: "
                         f"exclude_embeddings={exclude_embeddings!r}")
    adam, treedef = _branch_flags(params, exclude_layers, exclude_embeddings, adam_mask)
    return treedef.unflatten(["adamw" if a else "muon" for a in adam])


def orthogonalize(x: jax.Array, steps: int, a: float, b: float, c: float) -> jax.Array:
    r"""The quintic Newton–Schulz iteration of Muon on a matrix `x`.

    :math:`X_0 = x / (\|x\|_F + 10^{-7})` (transposed first when `x` has more rows than
    columns), then `steps` times :math:`A = X X^\top`, :math:`X \leftarrow aX + (bA + cA^2)X`.
    The result approximates :math:`UV^\top` from the SVD :math:`x = USV^\top`.
    """
    if explicit_axes(x):
        # With Explicit mesh axes, `x @ x.T` of a split matrix contracts a split
        # dimension: let XLA lay out the iteration, and return `x`'s sharding.
        return in_auto_axes(lambda x, coefficients: _newton_schulz(x, steps, *coefficients),
                            jax.typeof(x).sharding.spec, x, (a, b, c))
    return _newton_schulz(x, steps, a, b, c)


def _newton_schulz(x, steps, a, b, c):
    # Coefficients given as arrays (injected by `optax.inject_hyperparams`) in x's dtype.
    a, b, c = (v if isinstance(v, (int, float)) else jnp.asarray(v, x.dtype) for v in (a, b, c))
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (jnp.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


def _check_exclude_layers(exclude_layers):
    if exclude_layers is None:
        return
    if isinstance(exclude_layers, str) or not isinstance(exclude_layers, (list, tuple)):
        raise ValueError(
            "`exclude_layers` must be a list of regex strings (or None). "
            f"Received: exclude_layers={exclude_layers!r}"
        )
    for pattern in exclude_layers:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(
                f"`exclude_layers` entries must be valid regular expressions. Received: "
                f"{pattern!r} in exclude_layers={exclude_layers!r} ({e})"
            ) from e


def _check_number(name, value):
    """A finite number: Python, numpy or jax scalar (traced ones pass unchecked)."""
    check_number(name, value, message=f"`{name}` must be a finite number.")


def _static_ns_steps(ns_steps) -> int:
    """`ns_steps` as a Python int: it fixes the iterations compiled into the step, so it
    cannot be a traced value (a concrete integer scalar array is accepted)."""
    if is_traced(ns_steps):
        raise ValueError(
            f"`ns_steps` must be a concrete int in [0, {MAX_NS_STEPS}]: it fixes how many Newton–Schulz "
            "iterations are compiled into the step. With optax.inject_hyperparams, pass "
            f"static_args=('ns_steps',). Received: ns_steps={ns_steps!r}")
    v = concrete(ns_steps)
    if not isinstance(v, int) or not 0 <= v <= MAX_NS_STEPS:
        raise ValueError(f"`ns_steps` must be an integer in [0, {MAX_NS_STEPS}] (each step is "
                         f"two matrix products per matrix). Received: ns_steps={ns_steps!r}")
    return v


def _check_args(*, adam_beta_1, adam_beta_2, epsilon, momentum, adam_weight_decay,
                adam_lr_ratio, muon_a, muon_b, muon_c, rms_rate, exclude_layers,
                exclude_embeddings, nesterov):
    """Muon's own arguments (the cross-cutting ones are `Options`')."""
    check_unit_interval("adam_beta_1", adam_beta_1)
    check_unit_interval("adam_beta_2", adam_beta_2)
    check_nonnegative("epsilon", epsilon)
    check_unit_interval("momentum", momentum)
    validate_weight_decay(adam_weight_decay, "adam_weight_decay")   # finite, >= 0 or None
    check_nonnegative("adam_lr_ratio", adam_lr_ratio)
    for name, value in (("muon_a", muon_a), ("muon_b", muon_b), ("muon_c", muon_c)):
        _check_number(name, value)
    if rms_rate is not None:
        check_nonnegative("rms_rate", rms_rate)
    _check_exclude_layers(exclude_layers)
    if not isinstance(exclude_embeddings, bool):
        raise ValueError("`exclude_embeddings` must be a bool. Received: "
                         f"exclude_embeddings={exclude_embeddings!r}")
    if not isinstance(nesterov, bool):
        raise ValueError(f"`nesterov` must be a bool. Received: nesterov={nesterov!r}")


@with_options(exclude=('state_dtype', 'min_quantized_size'))
def muon(
    learning_rate=0.001,
    adam_beta_1: float = 0.9,
    adam_beta_2: float = 0.999,
    adam_weight_decay: float | None = 0.004,
    epsilon: float = 1e-7,
    weight_decay: float | None = 0.004,
    *,
    exclude_layers: list[str] | None = None, exclude_embeddings: bool = True,
    muon_a: float = 3.4445, muon_b: float = -4.7750, muon_c: float = 2.0315,
    adam_lr_ratio: float = 1, momentum: float = 0.95, ns_steps: int = 5,
    nesterov: bool = True, rms_rate: float | None = 0.2, adam_mask: Any = None,
    options: Options,
) -> Transform:
    r"""Muon (MomentUm Orthogonalized by Newton–Schulz), as Keras 3 computes it.

    Each param leaf takes one of two branches, chosen once, at `init`:

    - **AdamW** if it is not 2-D, or (with `exclude_embeddings`) its tree path contains
      "embedding" (any case), or its path matches a regex of `exclude_layers`
      (`re.search`), or `adam_mask` marks it. Paths are the keys joined by "/", e.g.
      `params["dense"]["kernel"]` is `"dense/kernel"`, without the final `.value` of an
      `nnx.Variable` (see `param_path`), so `nnx.split` params and `nnx.Optimizer` match
      alike. `muon_branches(params, ...)` shows the branch of every leaf.
    - **Muon** otherwise.

    With step :math:`t = \text{count} + 1`, learning rate :math:`\eta`, momentum
    :math:`\mu` and Keras's quintic Newton–Schulz map :math:`\mathrm{NS}` (see
    `orthogonalize`: `ns_steps` iterations with coefficients `muon_a, muon_b, muon_c`):

    .. math::
        \textbf{Muon:}\quad m &\leftarrow \mu m + g, \qquad
        u = g + \mu m \text{ (nesterov) or } m, \\
        \theta &\leftarrow \theta - \eta\, \mathrm{NS}(u)\, \rho \sqrt{\max(r, c)}
        \quad\text{for an } r \times c \text{ param } (\rho = \texttt{rms\_rate};
        \text{ the factor is 1 when it is None}) \\
        \textbf{AdamW:}\quad m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow v + (1-\beta_2)(g^2 - v), \\
        \theta &\leftarrow \theta - \eta\,\kappa \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \frac{m}{\sqrt v + \epsilon} \qquad (\kappa = \texttt{adam\_lr\_ratio})

    Before the step, decoupled weight decay :math:`\theta \leftarrow \theta - \lambda\eta\theta`
    with :math:`\lambda` = `weight_decay` on Muon leaves and `adam_weight_decay` on AdamW
    leaves (note: :math:`\eta`, not :math:`\kappa\eta`), where `weight_decay_mask` allows.
    Gradients are clipped before all of this, as for every kopt optimizer.

    The state keeps `m` for every leaf and `v` for the AdamW leaves; a Muon leaf's `v` is
    an empty `Stub` of shape (0,) (no array: orbax cannot save empty ones; `v.leaf(i)`
    reads it as zeros), which is how `update` knows its branch.

    Args:
      learning_rate: float, schedule or callable `step -> lr`. Default 0.001.
      adam_beta_1: AdamW branch: decay of the first moment. Default 0.9.
      adam_beta_2: AdamW branch: decay of the second moment. Default 0.999.
      adam_weight_decay: decoupled weight decay of the AdamW leaves, or None. Default 0.004.
      epsilon: AdamW branch: Keras's "epsilon hat". Default 1e-7.
      weight_decay: decoupled weight decay of the Muon leaves, or None. Default 0.004.
      exclude_layers: list of regexes; leaves whose path matches one take the AdamW
        branch. Default None.
      exclude_embeddings: leaves whose path contains "embedding" take the AdamW branch.
        Default True.
      muon_a, muon_b, muon_c: Newton–Schulz coefficients. Defaults 3.4445, -4.7750, 2.0315.
      adam_lr_ratio: the AdamW branch's learning rate is `adam_lr_ratio * learning_rate`.
        Default 1.
      momentum: the Muon branch's momentum :math:`\mu`, in [0, 1]. Default 0.95.
      ns_steps: Newton–Schulz iterations, an int in [0, 100]. Default 5. Static (it fixes
        the program): `optax.inject_hyperparams` needs `static_args=("ns_steps",)`.
      nesterov: Nesterov-style momentum on the Muon branch. Default True.
      rms_rate: the Moonlight update scale (Liu et al., 2025), or None for no scaling.
        Default 0.2.
      adam_mask: kopt only: a pytree of bools like params, or a callable
        `params -> pytree of bools`, marking more leaves for the AdamW branch. Default None.
      weight_decay_mask: pytree of bools or callable `params -> bools`; where False, no
        weight decay (of either kind). Default None (decay everywhere).
      clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
      loss_scale_factor, gradient_accumulation_steps: as in `kopt.functional.sgd`.
      bucket_threshold: accepted for uniformity; Muon's state is never bucketed (its
        steps need whole matrices).

    `update` needs `params` unless both weight decays are None (or 0).

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> tx = kopt.functional.muon(1e-3, exclude_layers=["head"])
      >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
      ...           "head": {"kernel": jnp.ones((3, 2))}}
      >>> state = tx.init(params)
      >>> [v.shape for v in jax.tree.leaves(state.v.to_tree())]   # AdamW leaves only
      [(3,), (0,), (3, 2)]
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = jax.jit(tx.update)(grads, state, params)

    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks"
    (2024, github.com/KellerJordan/Muon); Liu et al., "Muon is Scalable for LLM Training"
    (2025, arXiv:2502.16982); `keras.optimizers.Muon`.
    """
    _check_args(adam_beta_1=adam_beta_1, adam_beta_2=adam_beta_2, epsilon=epsilon,
                momentum=momentum, adam_weight_decay=adam_weight_decay,
                adam_lr_ratio=adam_lr_ratio, muon_a=muon_a, muon_b=muon_b, muon_c=muon_c,
                rms_rate=rms_rate, exclude_layers=exclude_layers,
                exclude_embeddings=exclude_embeddings, nesterov=nesterov)

    adam_step = adam_rule(adam_beta_1, adam_beta_2, epsilon, False).step
    muon_step = functools.partial(_muon_step, momentum=momentum, nesterov=nesterov,
                                  rms_rate=rms_rate, ns_steps=_static_ns_steps(ns_steps),
                                  coefficients=(muon_a, muon_b, muon_c))
    cross_cutting = options.replace(weight_decay=None, weight_decay_mask=None)
    rates = {"adam": adam_weight_decay, "muon": weight_decay}   # numbers, or traced arrays

    @functools.lru_cache(maxsize=8)
    def engine(adam: tuple[bool, ...], decay: tuple[str | None, ...]) -> Transform:
        """The transform for one static choice of branch and decay kind per leaf."""
        rule = _muon_rule(adam, decay, adam_step, muon_step, adam_lr_ratio, rates)
        return elementwise_transform(rule, MuonState, learning_rate, cross_cutting)

    engine((), ())   # validates the learning rate and the cross-cutting options now
    decays = functools.partial(_decay_kinds, rates=rates, mask=options.weight_decay_mask)
    flags = functools.partial(_branch_flags, exclude_layers=exclude_layers,
                              exclude_embeddings=exclude_embeddings, adam_mask=adam_mask)
    return _branching(engine, decays, flags)


def _muon_step(g, m, lr, *, momentum, nesterov, rms_rate, ns_steps, coefficients):
    """Muon's momentum and orthogonalised step on one matrix: `(delta, new m)`."""
    m = momentum * m + g
    u = g + momentum * m if nesterov else m
    scale = 1.0 if rms_rate is None else rms_rate * math.sqrt(max(g.shape))
    return -(lr * orthogonalize(u, ns_steps, *coefficients)) * scale, m


def _muon_rule(adam, decay, adam_step, muon_step, adam_lr_ratio, rates) -> Rule:
    """The per-leaf rule: AdamW where `adam[leaf]`, else Muon; decoupled decay at the rate
    `rates[decay[leaf]]` ("adam" or "muon"; None: no decay). The rates may be traced."""

    def init(name, param, i):
        dtype = state_dtype_for(param.dtype)
        if name == "v" and not adam[i]:
            return jnp.zeros((0,), dtype)
        return jnp.zeros_like(param, dtype=dtype)

    def step(g, s, lr, t, param=None, *, leaf, layout):
        del layout
        if adam[leaf]:
            delta, new = adam_step(g, s, lr * adam_lr_ratio, t)
        else:
            delta, m = muon_step(g, s["m"], lr)
            new = {"m": m, "v": s["v"]}
        if decay[leaf]:   # Keras decays with the main learning rate on both branches
            delta = delta - param * (rates[decay[leaf]] * lr)
        return delta, new

    return Rule(slots=("m", "v"), step=step, per_leaf=True, init=init, leaf_info=True,
                needs_params=any(decay))


def _decay_kinds(adam, params, treedef, *, rates, mask):
    """Which decay rate each leaf takes, "adam" or "muon" (None: no decay): a static
    tuple, also when the rates are traced (`optax.inject_hyperparams`: a traced rate
    may be 0, and decays by 0)."""
    on = {kind: maybe_nonzero(rate) for kind, rate in rates.items()}
    if not any(on.values()):
        return (None,) * len(adam)
    if params is None:
        raise ValueError(
            "Muon applies weight decay (weight_decay and adam_weight_decay are 0.004 by "
            "default), so update() needs `params`: call update(grads, state, params), "
            "or pass weight_decay=None, adam_weight_decay=None."
        )
    use = resolve_mask(mask, params, treedef)
    kinds = ("adam" if a else "muon" for a in adam)
    return tuple(k if u and on[k] else None for k, u in zip(kinds, use))


def _branching(engine, decays, flags) -> Transform:
    """Muon's transform: the engine of the params' static branches and decay kinds."""

    def init_fn(params):
        adam, treedef = flags(params)
        return engine(adam, decays(adam, params, treedef)).init(params)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args   # accepted and ignored, as optax's GradientTransformationExtraArgs
        m, v = state.m.layout, state.v.layout   # a Muon leaf's `v` is an empty (0,) Stub
        adam = tuple(a == b for a, b in zip(v.shapes, m.shapes))
        return engine(adam, decays(adam, params, m.treedef)).update(updates, state, params)

    return Transform(init_fn, update_fn)
