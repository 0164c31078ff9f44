"""#16.1: stateful classes are derived from their functional factories.

The constructor signatures below were recorded from the hand-written constructors before
they were replaced by derived ones: the derived signatures must match them exactly.
"""

import doctest
import inspect
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import kopt
from kopt import functional
from kopt.stateful.derived import constructor_signature
from kopt.stateful.optimizer import Optimizer

RECORDED = {
    "SGD": "(learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "RMSprop": "(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, centered=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adam": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "AdamW": "(learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adadelta": "(learning_rate=0.001, rho=0.95, epsilon=1e-07, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adagrad": "(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-07, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adamax": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Nadam": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Ftrl": "(learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1, l1_regularization_strength=0.0, l2_regularization_strength=0.0, l2_shrinkage_regularization_strength=0.0, beta=0.0, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Lion": "(learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adafactor": "(learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=0.001, clip_threshold=1.0, relative_step=True, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, **kwargs)",
    "Lamb": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, **kwargs)",
    "RAdam": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-08, threshold=5.0, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "AdaBelief": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-16, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "Adan": "(learning_rate=0.001, beta_1=0.98, beta_2=0.92, beta_3=0.99, epsilon=1e-08, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "AdEMAMix": "(learning_rate=0.001, beta_1=0.9, beta_2=0.999, beta_3=0.9999, alpha=5.0, epsilon=1e-08, alpha_warmup_steps=None, beta_3_warmup_steps=None, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, state_dtype=None, min_quantized_size=2048, **kwargs)",
    "LARS": "(learning_rate=1.0, momentum=0.9, nesterov=False, trust_coefficient=0.001, coupled_weight_decay=0.0, epsilon=0.0, exclude_from_layer_adaptation=None, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, **kwargs)",
    "Muon": "(learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999, adam_weight_decay=0.004, epsilon=1e-07, weight_decay=0.004, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, exclude_layers=None, exclude_embeddings=True, muon_a=3.4445, muon_b=-4.775, muon_c=2.0315, adam_lr_ratio=1, momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2, bucket_threshold=None, **kwargs)",
    "ScheduleFreeAdamW": "(learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-08, warmup_steps=0, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None, bucket_threshold=None, **kwargs)",
}
KEEP_CONSTRUCTOR = {"LARS", "Muon"}
STATEFUL = pathlib.Path(kopt.__file__).parent / "stateful"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_constructor_signature_unchanged(name):
    cls = getattr(kopt.optimizers, name)
    assert str(inspect.signature(cls)) == RECORDED[name]
    if name not in KEEP_CONSTRUCTOR:   # derived from the factory, not written
        assert str(constructor_signature(cls._factory)) == "(self, " + RECORDED[name][1:]
        assert cls.__init__.__qualname__ == f"{name}.__init__"


@pytest.mark.parametrize("name", sorted(set(RECORDED) - KEEP_CONSTRUCTOR))
def test_positional_and_keyword_construction_agree(name):
    cls = getattr(kopt.optimizers, name)
    params = list(inspect.signature(cls).parameters.values())
    # every argument passed positionally, with its default, gives the default config
    positional = cls(*[p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD])
    assert positional.get_config() == cls().get_config()
    assert cls(0.125, name="x").get_config() == cls(learning_rate=0.125, name="x").get_config()
    config = cls(0.125, name="y").get_config()
    expected = {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD}
    assert set(config) == expected
    assert type(cls.from_config(config)).__init__ is cls.__init__


@pytest.mark.parametrize("name", sorted(set(RECORDED) - KEEP_CONSTRUCTOR))
def test_shell_is_docstring_and_factory(name):
    cls = getattr(kopt.optimizers, name)
    source = pathlib.Path(inspect.getsourcefile(cls))
    assert len(source.read_text().splitlines()) <= 40, source
    assert "__init__" not in cls.__dict__ or cls.__init__.__module__ == cls.__module__
    assert "def __init__" not in source.read_text()


def test_keras_extras_still_handled():
    with pytest.warns(UserWarning, match="decay"):
        kopt.optimizers.Adam(decay=0.1)
    with pytest.raises(ValueError, match="Use `learning_rate` instead of `lr`"):
        kopt.optimizers.Adam(lr=0.1)
    with pytest.raises(ValueError, match="not recognized.*bogus"):
        kopt.optimizers.SGD(bogus=1)
    with pytest.raises(TypeError):
        kopt.optimizers.Lion(*range(20))   # more positional arguments than the signature


def test_new_optimizer_is_one_class_statement():
    class MyAdam(Optimizer, factory=functional.adam):
        """Adam, declared in one statement."""

    assert str(inspect.signature(MyAdam)) == RECORDED["Adam"]
    w = kopt.Variable(jnp.ones((3,)), name="w")
    ours, theirs = MyAdam(0.1, beta_1=0.5), kopt.optimizers.Adam(0.1, beta_1=0.5)
    w2 = kopt.Variable(jnp.ones((3,)), name="w")
    with warnings.catch_warnings():
        for _ in range(2):
            ours.apply_gradients([(w.value * 2, w)])
            theirs.apply_gradients([(w2.value * 2, w2)])
    np.testing.assert_array_equal(np.asarray(w.value), np.asarray(w2.value))
    assert MyAdam().name == "myadam"


def test_factory_without_defaults_is_refused():
    def rule(learning_rate, beta):   # no defaults: no constructor can be derived
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="Received arguments without one: \\['learning_rate', 'beta'\\]"):
        class Bad(Optimizer, factory=rule):
            pass


@pytest.mark.parametrize("name", sorted(set(RECORDED) - KEEP_CONSTRUCTOR))
def test_docstring_completed_from_the_factory_and_its_example_runs(name):
    cls = getattr(kopt.optimizers, name)
    doc = cls.__doc__
    assert f"`kopt.functional.{cls._factory.__name__}`" in doc
    assert doc.count("Example:") == 1
    assert ("`state_dtype`" in doc) == ("state_dtype" in inspect.signature(cls).parameters)
    tests = doctest.DocTestFinder().find(cls, name, globs={})
    examples = [t for t in tests if t.examples]
    assert examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in examples:
        runner.run(t)
    assert runner.failures == 0
