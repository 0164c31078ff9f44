"""Keras 3 gradient clipping: per-tensor `clipnorm`, `clipvalue`, and `global_clipnorm`.

Each is a stateless `Transform` for `chain`, and `clip_leaves` applies the one option an
optimizer was configured with to a list of gradient leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kopt.functional.base import Transform, wider_dtype
from kopt.functional.validation import TRACED, check_number, concrete

__all__ = ["clip_by_norm", "clip_by_value", "clip_by_global_norm", "validate_clip_options"]


class EmptyState(tuple):
    """State of a stateless transform."""


jax.tree_util.register_pytree_node(EmptyState, lambda s: ((), None), lambda _, __: EmptyState())


def validate_clip_options(clipnorm, clipvalue, global_clipnorm):
    given = {k: v for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                               ("global_clipnorm", global_clipnorm)) if v is not None}
    if len(given) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
            f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
            f"global_clipnorm={global_clipnorm}"
        )
    for k, v in given.items():
        check_number(k, v, low=0, allow_inf=True, message=f"`{k}` must be a number >= 0.")


def _norm_clip(g, clip):
    """Keras's `_clip_by_norm`: g * clip / max(||g||, clip), safe at ||g|| = 0."""
    l2sum = jnp.sum(jnp.square(g))
    pred = l2sum > 0
    l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, jnp.ones_like(l2sum))), l2sum)
    clip = jnp.asarray(clip, g.dtype)
    return g * clip / jnp.maximum(l2norm, clip)


def global_norm(leaves):
    """sqrt of the sum of squares of every leaf, accumulated in float32 or wider."""
    total = sum(
        jnp.sum(jnp.square(g.astype(wider_dtype(g.dtype, jnp.float32)))) for g in leaves
    )
    return jnp.sqrt(total)


def _global_clip(leaves, clip):
    norm = global_norm(leaves)
    # Keras: clip * min(1/norm, 1/clip), then `+ (norm - norm)` so a NaN norm propagates.
    scale = clip * jnp.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
    return [g * scale.astype(g.dtype) for g in leaves]


def _active(clip):
    """True, False, or None for a traced value (decided inside the computation)."""
    if clip is None:
        return False
    v = concrete(clip)
    if v is TRACED:
        return None
    return bool(v) and v != float("inf")


def clip_leaves(leaves, clipnorm=None, clipvalue=None, global_clipnorm=None):
    """Apply the single configured Keras clip option to `leaves` (a list of arrays).

    As in Keras, an option of 0 disables it; so does infinity (no clipping). A traced
    option (optax.inject_hyperparams under jit) decides this inside the computation.
    """
    for clip, fn in ((clipnorm, lambda ls, c: [_norm_clip(g, c) for g in ls]),
                     (global_clipnorm, _global_clip),
                     (clipvalue, lambda ls, c: [jnp.clip(g, -c, c).astype(g.dtype)
                                                for g in ls])):
        active = _active(clip)
        if active:
            return fn(leaves, clip)
        if active is None:
            on = (clip > 0) & jnp.isfinite(clip)
            safe = jnp.where(on, clip, jnp.ones_like(clip))
            return [jnp.where(on, c, g) for c, g in zip(fn(leaves, safe), leaves)]
    return leaves


def _stateless(fn):
    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates)
        return jax.tree.unflatten(treedef, fn(leaves)), state

    return Transform(init_fn, update_fn)


def clip_by_norm(clipnorm: float) -> Transform:
    """Scale each tensor `g` to `g * clipnorm / max(||g||_2, clipnorm)` (Keras `clipnorm`).

    `clipnorm` is a number >= 0; 0 and `inf` mean no clipping. NaN is refused."""
    validate_clip_options(clipnorm, None, None)
    return _stateless(lambda leaves: clip_leaves(leaves, clipnorm=clipnorm))


def clip_by_value(clipvalue: float) -> Transform:
    """Clip every element to `[-clipvalue, clipvalue]` (Keras `clipvalue`).

    `clipvalue` is a number >= 0; 0 and `inf` mean no clipping. NaN is refused."""
    validate_clip_options(None, clipvalue, None)
    return _stateless(lambda leaves: clip_leaves(leaves, clipvalue=clipvalue))


def clip_by_global_norm(global_clipnorm: float) -> Transform:
    """Scale all tensors by `min(1, global_clipnorm / global_norm)` (Keras `global_clipnorm`).

    `global_clipnorm` is a number >= 0; 0 and `inf` mean no clipping. NaN is refused."""
    validate_clip_options(None, None, global_clipnorm)
    return _stateless(lambda leaves: clip_leaves(leaves, global_clipnorm=global_clipnorm))
