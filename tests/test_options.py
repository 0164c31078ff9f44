"""The cross-cutting options are declared once (`kopt.functional.options.Options`) and
every functional factory takes them through `with_options` (issue #16, item 2)."""

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import kopt
import kopt.functional.options as options_module
from kopt.functional.options import OPTION_NAMES, Options, with_options

F = kopt.functional

FACTORIES = {
    "sgd": F.sgd, "rmsprop": F.rmsprop, "adam": F.adam, "adamw": F.adamw,
    "adamax": F.adamax, "adagrad": F.adagrad, "adadelta": F.adadelta,
    "adabelief": F.adabelief, "adafactor": F.adafactor, "adan": F.adan,
    "ademamix": F.ademamix, "ftrl": F.ftrl, "lamb": F.lamb, "lars": F.lars, "lion": F.lion,
    "muon": F.muon, "nadam": F.nadam, "radam": F.radam,
    "schedule_free_adamw": F.schedule_free_adamw,
}
# Optimizers whose rule works on whole tensors: no low-precision state arguments.
NO_STATE_DTYPE = {"adafactor", "lamb", "lars", "muon", "schedule_free_adamw"}
# Options a factory declares itself, with its own default.
OWN_DEFAULTS = {("adamw", "weight_decay"): 0.004, ("muon", "weight_decay"): 0.004}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_factory_lists_every_option_with_the_bundle_default(name):
    params = inspect.signature(FACTORIES[name]).parameters
    assert "options" not in params
    expected = [o for o in OPTION_NAMES
                if not (name in NO_STATE_DTYPE and o in ("state_dtype", "min_quantized_size"))]
    for option in expected:
        assert option in params, f"{name} lacks `{option}`"
        default = OWN_DEFAULTS.get((name, option), Options.__dataclass_fields__[option].default)
        assert params[option].default == default, (name, option)
    # The options the factory does not declare itself come last, keyword-only, in the
    # bundle's order (the stateful constructors are derived from this signature).
    tail = [p for p in params.values() if p.name in expected
            and (name, p.name) not in OWN_DEFAULTS]
    assert [p.name for p in tail] == [o for o in expected if (name, o) not in OWN_DEFAULTS]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in tail)


def test_a_new_option_reaches_every_decorated_factory(monkeypatch):
    """A field added to the bundle shows up in a factory's signature and its value in the
    `Options` the factory receives: adding an option is a one-file change."""

    @dataclasses.dataclass(frozen=True, eq=False)
    class Wider(Options):
        new_option: int = 7

    seen = {}

    def factory(learning_rate=0.1, beta=0.5, *, options: Options):
        seen["options"] = options
        return learning_rate, beta

    monkeypatch.setattr(options_module, "Options", Wider)
    monkeypatch.setattr(options_module, "OPTION_NAMES",
                        tuple(f.name for f in dataclasses.fields(Wider)))
    wrapped = with_options(factory)
    params = inspect.signature(wrapped).parameters
    assert params["new_option"].default == 7
    assert wrapped(0.2, new_option=3, clipnorm=1.0) == (0.2, 0.5)
    assert seen["options"].new_option == 3
    assert seen["options"].clipnorm == 1.0


def test_options_validate_once_with_the_keras_messages():
    with pytest.raises(ValueError, match="Only one of `clipnorm`"):
        Options(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match=r"Received: gradient_accumulation_steps=1"):
        Options(gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match=r"Received: state_dtype='float16'"):
        Options(state_dtype="float16")
    with pytest.raises(ValueError, match=r"Received: ema_momentum=2"):
        Options(use_ema=True, ema_momentum=2)
    with pytest.raises(ValueError, match="Received: weight_decay=-1"):
        Options().replace(weight_decay=-1)
    # Canonical forms: dtype objects become names.
    assert Options(state_dtype=jnp.bfloat16).state_dtype == "bfloat16"


def test_keyword_errors_name_the_factory():
    with pytest.raises(TypeError, match=r"adam\(\) got an unexpected keyword argument 'foo'"):
        F.adam(foo=1)
    with pytest.raises(TypeError, match=r"lamb\(\) got an unexpected keyword argument "
                                        r"'state_dtype'"):
        F.lamb(state_dtype="bfloat16")


def test_positional_and_keyword_calls_build_the_same_optimizer():
    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.array([0.5, -1.0, 2.0])}
    a = F.adamw(0.1, 0.2, 0.8, clipnorm=1.0)
    b = F.adamw(learning_rate=0.1, weight_decay=0.2, beta_1=0.8, clipnorm=1.0)
    ua, _ = a.update(grads, a.init(params), params)
    ub, _ = b.update(grads, b.init(params), params)
    np.testing.assert_array_equal(ua["w"], ub["w"])
    # The positional weight decay of AdamW reaches the bundle (and so the engine).
    c = F.adamw(0.1, 0.0, 0.8, clipnorm=1.0)
    uc, _ = c.update(grads, c.init(params), params)
    assert not np.allclose(ua["w"], uc["w"])
