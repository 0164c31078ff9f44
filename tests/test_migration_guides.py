"""The migration guides' code runs, and each optax/kopt pair agrees as stated (#18.2, #18.3).

docs/coming-from-optax.md: a `setup` block, then one section per row with an `optax` and
a `kopt` block, each building `tx` (a transform) or `schedule`. Without a `difference`
block, the two must agree to float32 rounding (trajectories from the setup's `trajectory`,
schedules over `steps`); a `check` block runs as well, a `difference` block instead. Both
see the setup's names plus `optax_tx`/`kopt_tx` (or `optax_schedule`/`kopt_schedule`).

docs/coming-from-keras.md: every `python` block runs, in order, in one namespace.
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
_FENCE = re.compile(r'^```python(?: title="([^"]*)")?\n(.*?)^```$', re.M | re.S)


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(title or "", code) for title, code in _FENCE.findall(text)]


def _optax_rows():
    text = (DOCS / "coming-from-optax.md").read_text()
    setup = [code for title, code in _blocks(text) if title == "setup"]
    rows = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        name = section.splitlines()[0].strip()
        rows[name] = dict(_blocks(section))
    return setup, rows


SETUP, ROWS = _optax_rows()


def test_optax_guide_has_a_pair_per_table_row():
    text = (DOCS / "coming-from-optax.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| [")]
    anchors = [re.search(r"\]\(#([^)]+)\)", line).group(1) for line in table]
    sections = {re.sub(r"[^a-z0-9 -]", "", name.lower()).replace(" ", "-") for name in ROWS}
    assert len(SETUP) == 1
    assert len(table) >= 30, len(table)
    assert sorted(set(anchors)) == sorted(sections), set(anchors) ^ sections
    for name, blocks in ROWS.items():
        assert {"optax", "kopt"} <= set(blocks), f"row {name!r} lacks a code pair: {set(blocks)}"
        assert set(blocks) <= {"optax", "kopt", "check", "difference"}, (name, set(blocks))
    for name in ("adam", "adamw", "sgd", "nadam", "muon", "schedule-free AdamW",
                 "warmup cosine decay", "MultiSteps", "inject hyperparams"):
        assert name in ROWS, name


def _exec(code, namespace):
    exec(compile(code, "<coming-from-optax.md>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def setup_namespace():
    pytest.importorskip("optax")
    with jax.numpy_dtype_promotion("standard"):   # optax mixes int32 counts and floats
        return _exec(SETUP[0], {"__name__": "coming_from_optax"})


@pytest.mark.parametrize("row", sorted(ROWS))
def test_optax_pair(row, setup_namespace):
    blocks = ROWS[row]
    with jax.numpy_dtype_promotion("standard"):
        ours = _exec(blocks["kopt"], dict(setup_namespace))
        theirs = _exec(blocks["optax"], dict(setup_namespace))
        kind = "tx" if "tx" in ours else "schedule"
        assert kind in theirs, f"{row}: the optax block defines no {kind}"
        ns = dict(setup_namespace, **{f"optax_{kind}": theirs[kind], f"kopt_{kind}": ours[kind]})
        if "difference" in blocks:
            _exec(blocks["difference"], ns)
            return
        if kind == "tx":
            ns["assert_close"](ns["trajectory"](theirs["tx"]), ns["trajectory"](ours["tx"]))
        else:
            steps = ns["steps"]
            np.testing.assert_allclose(np.asarray(jax.vmap(ours["schedule"])(steps)),
                                       np.asarray(jax.vmap(theirs["schedule"])(steps)), rtol=2e-5, atol=1e-9)
        if "check" in blocks:
            _exec(blocks["check"], ns)


def test_keras_guide_runs():
    """Every block of docs/coming-from-keras.md, in order, in one namespace."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("kopt.interop.keras needs KERAS_BACKEND=jax")
    blocks = _blocks((DOCS / "coming-from-keras.md").read_text())
    assert len(blocks) >= 6 and all(title == "" for title, _ in blocks)
    namespace = {"__name__": "coming_from_keras"}
    # Keras's layers broadcast biases and mix Python scalars: standard JAX semantics, as in
    # users' programs (the suite's strict settings would refuse Keras itself).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for i, (_, code) in enumerate(blocks):
            exec(compile(code, f"<coming-from-keras.md block {i}>", "exec"), namespace)
    assert int(namespace["loaded_opt"].iterations) == 2   # the last block ran to its end
