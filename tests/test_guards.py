"""Guards on every numeric hyperparameter of every functional factory (issue #14.4), and
Keras 3's error messages for the same misuse (issue #13.10).

- NaN and inf are refused with a ValueError naming the argument, for every numeric
  argument of every optimizer factory (found from the signatures, so a new argument is
  covered without editing this file). Where inf means something (`clipnorm`,
  `clipvalue`, `global_clipnorm`: no clipping) it is accepted and behaves so.
- numpy scalars, 0-d numpy arrays and 0-d jax arrays are accepted, and checked like floats.
- Where Keras 3 raises for the same misuse, kopt raises the same exception type and its
  message contains Keras's sentence (taken from Keras itself at test time).
"""

import inspect
import math

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import kopt.functional as F
from tests.catalogue import CATALOGUE

OPTIMIZERS = [e.factory_name for e in CATALOGUE]
# inf means "no clipping" for these; accepted and documented in the factories.
ALLOW_INF = {"clipnorm", "clipvalue", "global_clipnorm"}
# Arguments that conflict with each other: give one at a time.
NON_NUMERIC = {"nesterov", "amsgrad", "centered", "relative_step", "use_ema",
               "exclude_embeddings", "exclude_layers", "weight_decay_mask", "trust_ratio_mask",
               "adam_mask", "state_dtype"}


def _numeric_args(factory):
    """The numeric parameters of a factory: a number as default, or an annotation that
    says float or int (those defaulting to None)."""
    out = []
    for name, p in inspect.signature(factory).parameters.items():
        if name in NON_NUMERIC:
            continue
        d, ann = p.default, str(p.annotation)
        if (isinstance(d, (int, float)) and not isinstance(d, bool)) or "float" in ann \
                or "int" in ann or name == "learning_rate":
            out.append(name)
    return out


CASES = [(opt, arg, bad) for opt in OPTIMIZERS for arg in _numeric_args(getattr(F, opt))
         for bad in ("nan", "inf")]


def test_the_table_covers_the_arguments_of_the_issue():
    args = {arg for _, arg, _ in CASES}
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "epsilon", "epsilon_1",
                 "epsilon_2", "adam_lr_ratio", "adam_weight_decay", "alpha",
                 "coupled_weight_decay", "beta_1", "beta_2", "momentum", "weight_decay", "rho",
                 "learning_rate", "ema_momentum", "loss_scale_factor"):
        assert name in args, name
    assert len(CASES) > 300


@pytest.mark.parametrize("opt,arg,bad", CASES, ids=[f"{o}-{a}-{b}" for o, a, b in CASES])
def test_nan_and_inf_hyperparameters_are_refused(opt, arg, bad):
    value = float(bad)
    factory = getattr(F, opt)
    if bad == "inf" and arg in ALLOW_INF:
        tx = factory(**{arg: value})   # accepted: no clipping
        params = {"w": jnp.full((3,), 2.0)}
        grads = {"w": jnp.full((3,), 100.0)}
        plain = factory()
        u, _ = tx.update(grads, tx.init(params), params)
        ref, _ = plain.update(grads, plain.init(params), params)
        np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(ref["w"]))
        return
    with pytest.raises(ValueError, match=arg) as info:
        factory(**{arg: value})
    assert f"{arg}=" in str(info.value)


@pytest.mark.parametrize("wrap", [np.float32, np.asarray, jnp.asarray],
                         ids=["numpy-scalar", "numpy-0d", "jax-0d"])
def test_array_hyperparameters_are_validated_when_concrete(wrap):
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.full((3,), 0.5)}
    ref = F.adam(0.01, beta_1=0.8, clipnorm=1.0)
    tx = F.adam(wrap(0.01), beta_1=wrap(0.8), clipnorm=wrap(1.0))
    u, _ = tx.update(grads, tx.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(r["w"]), rtol=1e-6)
    for arg, value in (("beta_1", 1.5), ("beta_1", math.nan), ("epsilon", -1.0),
                       ("clipnorm", math.nan), ("learning_rate", -0.1),
                       ("learning_rate", math.inf), ("ema_momentum", math.nan)):
        with pytest.raises(ValueError, match=f"{arg}="):
            F.adam(**{arg: wrap(value)})
    with pytest.raises(ValueError, match="gradient_accumulation_steps="):
        F.sgd(gradient_accumulation_steps=np.int32(1))
    tx = F.sgd(0.1, gradient_accumulation_steps=np.int64(2))   # integer scalars accepted
    tx.update(grads, tx.init(params), params)


def test_vector_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="beta_1="):
        F.adam(beta_1=np.array([0.9, 0.9]))


def test_infinite_clipping_means_no_clipping_under_jit_and_traced():
    params = {"w": jnp.full((3,), 2.0)}
    grads = {"w": jnp.full((3,), 100.0)}

    def run(clip):
        tx = F.sgd(0.1, clipnorm=clip)
        return tx.update(grads, tx.init(params), params)[0]["w"]

    np.testing.assert_array_equal(np.asarray(run(math.inf)), -10.0)
    np.testing.assert_array_equal(np.asarray(jax.jit(run)(jnp.asarray(math.inf))), -10.0)
    np.testing.assert_array_equal(np.asarray(jax.jit(run)(jnp.asarray(0.0))), -10.0)
    clipped = np.asarray(jax.jit(run)(jnp.asarray(1.0)))
    np.testing.assert_allclose(np.linalg.norm(clipped), 0.1, rtol=1e-6)


# ------------------------------------------------------------------ Keras's messages
def _keras_sentence(make):
    """Keras's own message for a misuse, up to its `Received:` part."""
    with pytest.raises(Exception) as info:
        make()
    return type(info.value), str(info.value).split("Received")[0].strip()


KERAS_CASES = [
    ("ftrl-initial_accumulator_value",
     lambda: keras.optimizers.Ftrl(initial_accumulator_value=-1.0),
     lambda: F.ftrl(initial_accumulator_value=-1.0)),
    ("ftrl-learning_rate_power",
     lambda: keras.optimizers.Ftrl(learning_rate_power=0.5),
     lambda: F.ftrl(learning_rate_power=0.5)),
    ("ftrl-l1", lambda: keras.optimizers.Ftrl(l1_regularization_strength=-0.1),
     lambda: F.ftrl(l1_regularization_strength=-0.1)),
    ("ftrl-l2", lambda: keras.optimizers.Ftrl(l2_regularization_strength=-0.1),
     lambda: F.ftrl(l2_regularization_strength=-0.1)),
    ("ftrl-l2-shrinkage",
     lambda: keras.optimizers.Ftrl(l2_shrinkage_regularization_strength=-0.1),
     lambda: F.ftrl(l2_shrinkage_regularization_strength=-0.1)),
    ("lion-beta_1-zero", lambda: keras.optimizers.Lion(beta_1=0.0),
     lambda: F.lion(beta_1=0.0)),
    ("lion-beta_1-above", lambda: keras.optimizers.Lion(beta_1=1.5),
     lambda: F.lion(beta_1=1.5)),
    ("sgd-momentum", lambda: keras.optimizers.SGD(momentum=1.5),
     lambda: F.sgd(momentum=1.5)),
    ("clip-options", lambda: keras.optimizers.Adam(clipnorm=1.0, clipvalue=1.0),
     lambda: F.adam(clipnorm=1.0, clipvalue=1.0)),
    ("accumulation", lambda: keras.optimizers.Adam(gradient_accumulation_steps=1),
     lambda: F.adam(gradient_accumulation_steps=1)),
    ("ema_momentum", lambda: keras.optimizers.Adam(use_ema=True, ema_momentum=2.0),
     lambda: F.adam(use_ema=True, ema_momentum=2.0)),
    ("ema_overwrite_frequency",
     lambda: keras.optimizers.Adam(use_ema=True, ema_overwrite_frequency=0.5),
     lambda: F.adam(use_ema=True, ema_overwrite_frequency=0.5)),
    ("adamw-weight_decay-None", lambda: keras.optimizers.AdamW(weight_decay=None),
     lambda: F.adamw(weight_decay=None)),
    ("learning_rate-string", lambda: keras.optimizers.Adam(learning_rate="fast"),
     lambda: F.adam(learning_rate="fast")),
]


@pytest.mark.parametrize("name,theirs,ours", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_keras_message_and_type_for_the_same_misuse(name, theirs, ours):
    keras_type, sentence = _keras_sentence(theirs)
    assert sentence
    with pytest.raises(keras_type) as info:
        ours()
    assert sentence in str(info.value)
    assert "Received" in str(info.value)


def test_learning_rate_of_the_wrong_type_is_both_type_and_value_error():
    with pytest.raises(TypeError, match="learning_rate='fast'"):
        F.sgd(learning_rate="fast")
    with pytest.raises(ValueError, match="learning_rate='fast'"):
        F.sgd(learning_rate="fast")
