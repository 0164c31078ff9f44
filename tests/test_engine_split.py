"""The engine is a rule runner inside a Keras-order wrapper composed from the public
transforms (issue #16, item 3): EMA, accumulation, loss-scale and clipping exist once."""

import ast
import pathlib

import jax.numpy as jnp
import numpy as np

import kopt
import kopt.functional.elementwise as engine_module

F = kopt.functional
FUNCTIONAL = pathlib.Path(kopt.functional.__file__).parent
MAX_LINES = 120


def test_no_function_in_the_functional_layer_exceeds_120_lines():
    long = []
    for path in sorted(FUNCTIONAL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.name}:{node.name} ({n} lines)")
    assert not long, long


def _counting(monkeypatch, name):
    """Replace the engine's `name` transform factory by one that counts update calls."""
    calls = []
    original = getattr(engine_module, name)

    def factory(*args, **kwargs):
        tx = original(*args, **kwargs)

        def update(*a, **k):
            calls.append(1)
            return tx.update(*a, **k)
        return F.Transform(tx.init, update)

    monkeypatch.setattr(engine_module, name, factory)
    return calls


def _run(tx, steps=4):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    state = tx.init(params)
    for k in range(steps):
        grads = {"w": jnp.full((2, 3), 0.1 * (k + 1)), "b": jnp.full(3, -0.2 * k)}
        updates, state = tx.update(grads, state, params)
        params = F.apply_updates(params, updates)
    return params, state


def test_the_engine_runs_the_public_cross_cutting_transforms(monkeypatch):
    kwargs = dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3,
                  gradient_accumulation_steps=2, loss_scale_factor=4.0, clipnorm=1.0)
    want_params, want_state = _run(F.adam(0.1, **kwargs))
    counts = {name: _counting(monkeypatch, name) for name in
              ("ema", "accumulate_gradients", "unscale_gradients", "clip_by_norm")}
    params, state = _run(F.adam(0.1, **kwargs))
    assert {name: len(counts[name]) for name in
            ("ema", "accumulate_gradients", "unscale_gradients")} == {
        "ema": 4, "accumulate_gradients": 4, "unscale_gradients": 4}
    # Clipping runs inside the accumulation's update branch, which is traced on every call.
    assert len(counts["clip_by_norm"]) >= 4
    for k in want_params:
        np.testing.assert_array_equal(params[k], want_params[k])
    np.testing.assert_array_equal(state.ema.to_leaves()[0], want_state.ema.to_leaves()[0])
    assert int(state.count) == 2 and int(state.micro_step) == 4
