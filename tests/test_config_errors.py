"""Malformed optimizer configs (issue 14, item 5; optimizers part).

`kopt.optimizers.deserialize`, `get` and the wrappers' `from_config` raise ValueError or
TypeError naming the offending key, for wrong types, unknown keys, deep nesting (a
bounded walk: never a RecursionError) and malformed nested `learning_rate` schedules.
They only look names up in kopt's registries: no name, dotted path or `module` entry
imports or calls anything else.
"""

from __future__ import annotations

import builtins
import os
import sys

import pytest

import kopt
from kopt.optimizers import LossScaleOptimizer, MultiOptimizer, OptimizerMap
from kopt.stateful.serialization import MAX_CONFIG_DEPTH

ADAM = {"class_name": "Adam", "config": {"learning_rate": 0.1}}


def _nested_lso(depth: int) -> dict:
    config = ADAM
    for _ in range(depth):
        config = {"class_name": "LossScaleOptimizer", "config": {"inner_optimizer": config}}
    return config


def _nested_schedule(depth: int) -> dict:
    schedule = {"class_name": "ExponentialDecay",
                "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}}
    for _ in range(depth):
        schedule = {"class_name": "ExponentialDecay",
                    "config": {"initial_learning_rate": schedule, "decay_steps": 10,
                               "decay_rate": 0.5}}
    return {"class_name": "Adam", "config": {"learning_rate": schedule}}


def _self_containing() -> dict:
    config = {"class_name": "Adam", "config": {}}
    config["config"]["learning_rate"] = config
    return config


CASES = [
    # (id, call, exception type, words the message must contain)
    ("class-name-list", lambda: kopt.optimizers.deserialize({"class_name": ["Adam"], "config": {}}),
     TypeError, ("'class_name'", "['Adam']")),
    ("class-name-none", lambda: kopt.optimizers.get({"class_name": None, "config": {}}),
     TypeError, ("'class_name'", "None")),
    ("config-string", lambda: kopt.optimizers.deserialize({"class_name": "Adam", "config": "lr=1"}),
     ValueError, ("'config'", "'lr=1'")),
    ("config-list", lambda: kopt.optimizers.get({"class_name": "SGD", "config": [("momentum", 1)]}),
     ValueError, ("'config'", "list")),
    ("unknown-top-key", lambda: kopt.optimizers.deserialize({**ADAM, "exec": "print(1)"}),
     ValueError, ("'exec'",)),
    ("unknown-config-key", lambda: kopt.optimizers.get({"class_name": "SGD",
                                                         "config": {"learning_rat": 0.1}}),
     ValueError, ("learning_rat",)),
    ("non-string-config-key", lambda: kopt.optimizers.deserialize(
        {"class_name": "Adam", "config": {1: 0.1}}), TypeError, ("keys must be strings", "1")),
    # Optimizer.from_config runs the same tree check as deserialize (#16 item 5).
    ("from-config-non-string-key", lambda: kopt.optimizers.Adam.from_config({1: 0.1}),
     TypeError, ("keys must be strings", "key 1 of type int")),
    ("from-config-non-string-schedule-key", lambda: kopt.optimizers.SGD.from_config(
        {"learning_rate": {"class_name": "ExponentialDecay", "config": {(1, 2): 0.5}}}),
     TypeError, ("config['learning_rate']['config']", "key (1, 2)")),
    ("lr-schedule-class-name-list", lambda: kopt.optimizers.deserialize(
        {"class_name": "Adam", "config": {"learning_rate": {"class_name": ["x"], "config": {}}}}),
     (ValueError, TypeError), ("'learning_rate'",)),
    ("lr-schedule-config-string", lambda: kopt.optimizers.deserialize(
        {"class_name": "Adam",
         "config": {"learning_rate": {"class_name": "ExponentialDecay", "config": "abc"}}}),
     (ValueError, TypeError), ("'learning_rate'",)),
    ("lr-schedule-unknown", lambda: kopt.optimizers.get(
        {"class_name": "SGD", "config": {"learning_rate": {"class_name": "os.system",
                                                           "config": {}}}}),
     ValueError, ("'learning_rate'", "os.system")),
    ("lr-schedule-missing-config", lambda: kopt.optimizers.get(
        {"class_name": "SGD", "config": {"learning_rate": {"class_name": "ExponentialDecay"}}}),
     ValueError, ("'learning_rate'",)),
    ("deep-lso", lambda: kopt.optimizers.deserialize(_nested_lso(5000)),
     ValueError, ("nested more than", str(MAX_CONFIG_DEPTH))),
    ("deep-schedule", lambda: kopt.optimizers.deserialize(_nested_schedule(5000)),
     ValueError, ("nested more than", "'learning_rate'")),
    ("deep-lists", lambda: kopt.optimizers.get(
        {"class_name": "Adam", "config": {"learning_rate": _deep_list(5000)}}),
     ValueError, ("nested more than",)),
    ("self-containing", lambda: kopt.optimizers.deserialize(_self_containing()),
     ValueError, ("nested more than",)),
    ("lso-from-config-deep", lambda: LossScaleOptimizer.from_config(
        _nested_lso(5000)["config"]), ValueError, ("nested more than",)),
    ("lso-inner-not-a-config", lambda: LossScaleOptimizer.from_config(
        {"inner_optimizer": "os.system"}), TypeError, ("inner_optimizer", "'os.system'")),
    ("multi-map-not-a-dict", lambda: MultiOptimizer.from_config(
        {"optimizer_map": "encoder/.*"}), TypeError, ("'optimizer_map'", "'encoder/.*'")),
    ("multi-map-unknown-key", lambda: MultiOptimizer.from_config(
        {"optimizer_map": {"default_optimizer": ADAM, "policy": 1}}), ValueError, ("'policy'",)),
    ("optimizer-map-entries-list", lambda: OptimizerMap.from_config(
        {"default_optimizer": ADAM, "optimizer_map": [ADAM]}),
     TypeError, ("'optimizer_map'",)),
    ("optimizer-map-config-string", lambda: OptimizerMap.from_config("adam"),
     TypeError, ("dict", "'adam'")),
]


def _deep_list(depth: int):
    x = 0.1
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("call,kind,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_names_the_key(call, kind, words):
    with pytest.raises(kind) as info:
        call()
    assert not isinstance(info.value, RecursionError)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


FOREIGN_NAMES = ["os.system", "builtins.eval", "eval", "keras.layers.Dense", "module>Class",
                 "kopt>KoptOptimizer", "kopt.stateful.optimizer.Optimizer",
                 "kopt.optimizers.Adam", "__import__", "subprocess.Popen", "Optimizer"]


@pytest.fixture
def no_foreign_calls(monkeypatch):
    """Fail on any call of os.system/eval/exec or import of a module outside kopt."""
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(("os.system", a)))
    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] not in ("kopt", "jax", "jaxlib", "numpy"):
            if name not in sys.modules:
                calls.append(("import", name))
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(("eval", a)))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(("exec", a)))
    before = set(sys.modules)
    yield calls
    new = {m for m in set(sys.modules) - before if not m.startswith("kopt")}
    assert not new, new


@pytest.mark.parametrize("name", FOREIGN_NAMES)
def test_names_outside_the_registries_are_unknown_and_nothing_is_imported(name, no_foreign_calls):
    attempts = [
        lambda: kopt.optimizers.get(name),
        lambda: kopt.optimizers.deserialize({"class_name": name, "config": {}}),
        lambda: kopt.optimizers.deserialize({"module": name.rpartition(".")[0] or "os",
                                             "class_name": name, "config": {}}),
        lambda: kopt.optimizers.get({"class_name": "Adam", "config": {
            "learning_rate": {"class_name": name, "config": {}}}}),
        lambda: LossScaleOptimizer.from_config({"inner_optimizer": {"class_name": name,
                                                                    "config": {}}}),
        lambda: OptimizerMap.from_config({"default_optimizer": {"class_name": name}}),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError) as info:
            attempt()
        assert repr(name) in str(info.value) or name in str(info.value)
    assert no_foreign_calls == []


def test_valid_configs_still_round_trip():
    """The checks refuse nothing `serialize` writes (wrappers and schedules included)."""
    schedule = kopt.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    lso = LossScaleOptimizer(kopt.optimizers.Adam(schedule), initial_scale=4.0)
    multi = MultiOptimizer(OptimizerMap(kopt.optimizers.SGD(0.1),
                                        {"enc/.*": kopt.optimizers.Adam(schedule)}))
    for opt in (lso, multi, kopt.optimizers.Adam(schedule)):
        data = kopt.optimizers.serialize(opt)
        clone = kopt.optimizers.deserialize(data)
        assert type(clone) is type(opt)
        assert kopt.optimizers.serialize(clone) == data
    # Keras's own keys are accepted too.
    keras_style = {"module": "keras.optimizers", "class_name": "Adam",
                   "config": {"learning_rate": 0.1}, "registered_name": None}
    assert float(kopt.optimizers.deserialize(keras_style).learning_rate) == pytest.approx(0.1)
