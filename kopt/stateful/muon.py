"""Stateful `Muon`, a thin shell over `kopt.functional.muon.muon`."""

from __future__ import annotations

from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD
from kopt.functional.muon import muon, use_adamw
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.variable import variable_name

__all__ = ["Muon"]


class Muon(Optimizer, factory=muon):
    """Muon for matrices, AdamW for the rest, as `keras.optimizers.Muon`.

    The update rule, arguments and defaults are those of `kopt.functional.muon` (whose
    docstring gives the maths); the rest is the `kopt.optimizers.Optimizer` facade.

    As in Keras, the branch is chosen per variable, at build: AdamW for a variable that is
    not 2-D, whose path (or name) contains "embedding" (with `exclude_embeddings`), or
    that matches a regex of `exclude_layers` (`re.search`); Muon otherwise. Weight decay
    uses `weight_decay` on Muon variables and `adam_weight_decay` on AdamW ones;
    `exclude_from_weight_decay` turns both off for the variables it names.

    `get_weights()`: `[iterations, m of every variable, v of every variable]`, where `m`
    is the momentum (both branches) and `v` the AdamW second moment; a Muon variable has
    no second moment and its `v` entry is an empty array of shape (0,), so the list
    always has `1 + 2 * len(variables)` entries.

    Example:
      >>> import jax, jax.numpy as jnp, kopt
      >>> w = kopt.Variable(jnp.ones((4, 3)), name="dense/kernel")
      >>> b = kopt.Variable(jnp.zeros((3,)), name="dense/bias")
      >>> opt = kopt.optimizers.Muon(learning_rate=0.01)
      >>> int(opt.apply_gradients([(jnp.ones((4, 3)), w), (jnp.ones((3,)), b)]))
      1
      >>> [x.shape for x in opt.get_weights()]
      [(), (4, 3), (3,), (0,), (3,)]
    """

    _keras_slot_groups = (("m", "v"),)

    def __init__(
        self,
        learning_rate=0.001,
        adam_beta_1=0.9,
        adam_beta_2=0.999,
        adam_weight_decay=0.004,
        epsilon=1e-7,
        weight_decay=0.004,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        exclude_layers=None,
        exclude_embeddings=True,
        muon_a=3.4445,
        muon_b=-4.7750,
        muon_c=2.0315,
        adam_lr_ratio=1,
        momentum=0.95,
        ns_steps=5,
        nesterov=True,
        rms_rate=0.2,
        bucket_threshold=DEFAULT_BUCKET_THRESHOLD,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            hyper=dict(
                adam_beta_1=adam_beta_1, adam_beta_2=adam_beta_2,
                adam_weight_decay=adam_weight_decay, epsilon=epsilon,
                exclude_layers=exclude_layers, exclude_embeddings=exclude_embeddings,
                muon_a=muon_a, muon_b=muon_b, muon_c=muon_c, adam_lr_ratio=adam_lr_ratio,
                momentum=momentum, ns_steps=ns_steps, nesterov=nesterov, rms_rate=rms_rate,
            ),
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            bucket_threshold=bucket_threshold,
            **kwargs,
        )

    def _make_transform(self, mask=None):
        """Once built, Keras decides the branch by variable path: pass it down as a tuple
        of bools (`adam_mask`) rather than matching regexes on tuple indices."""
        hyper = dict(self._hyper)
        if self._vars is not None:
            hyper["adam_mask"] = tuple(
                use_adamw(variable_name(v), len(v.shape), hyper["exclude_layers"],
                          hyper["exclude_embeddings"])
                for v in self._vars
            )
            hyper.update(exclude_layers=None, exclude_embeddings=False)
        return muon(learning_rate=self._learning_rate, **hyper, **self._common_kwargs(),
                    weight_decay_mask=mask, bucket_threshold=self.bucket_threshold)
