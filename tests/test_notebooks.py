"""Execute every notebook in notebooks/ and check the outputs stored with them.

Each notebook runs top to bottom in a fresh Jupyter kernel, from an in-memory copy: the
stored files, whose outputs (plots included) GitHub shows, are never rewritten here. To
regenerate them, run `python notebooks/build.py`, which holds the cells' sources.

The kernel gets 8 host (CPU) devices through `XLA_FLAGS`, so `04_colab_tpu.ipynb` trains on
a mesh of 8 devices, as it would on the 8 cores of a TPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_quickstart_functional.ipynb",
    "02_keras_style_loop.ipynb",
    "03_schedules.ipynb",
    "04_colab_tpu.ipynb",
    "05_real_data.ipynb",
]
CELL_TIMEOUT_S = 300  # per cell; each notebook takes seconds, but CI machines can be loaded
HOST_DEVICES = 8
NO_NBCLIENT = "nbclient is not installed; pip install -e '.[test]' to execute the notebooks"


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def outputs_of_type(nb: dict, mime: str) -> list:
    return [o["data"][mime] for c in code_cells(nb) for o in c.get("outputs", [])
            if mime in o.get("data", {})]


def stdout_text(nb: dict) -> str:
    parts = []
    for c in code_cells(nb):
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                text = o["text"]
                parts.append(text if isinstance(text, str) else "".join(text))
    return "".join(parts)


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={HOST_DEVICES}".strip()
    env.pop("MPLBACKEND", None)  # the kernel's inline backend turns figures into PNG outputs
    return env


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_outputs_are_complete(name):
    """The stored notebook ran top to bottom without error and shows at least one plot."""
    nb = json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
    cells = code_cells(nb)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1)), (
        f"{name} was not executed top to bottom in one kernel; run python notebooks/build.py")
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name} has stored errors: {[e['ename'] for e in errors]}"
    assert outputs_of_type(nb, "image/png"), f"{name} has no stored plot"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_cells_match_build_script(name):
    """notebooks/build.py is the source of the cells; the stored notebook must not drift."""
    pytest.importorskip("nbformat", reason=NO_NBCLIENT)
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    stored = json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
    expected = build.new_notebook(name)
    assert [(c["cell_type"], source(c)) for c in stored["cells"]] == [
        (c["cell_type"], source(c)) for c in expected["cells"]
    ], f"{name} differs from notebooks/build.py; edit build.py and run python notebooks/build.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name):
    """Run the notebook in a fresh kernel; any cell that raises fails the test."""
    nbclient = pytest.importorskip("nbclient", reason=NO_NBCLIENT)
    import nbformat

    path = NOTEBOOKS_DIR / name
    stored_bytes = path.read_bytes()
    nb = nbformat.reads(stored_bytes.decode("utf-8"), as_version=4)
    for cell in code_cells(nb):
        cell["outputs"], cell["execution_count"] = [], None
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    client.execute(env=kernel_env())  # raises CellExecutionError, with the traceback, on failure

    assert path.read_bytes() == stored_bytes, "executing the notebook must not rewrite it"
    assert all(c["execution_count"] for c in code_cells(nb))
    assert outputs_of_type(nb, "image/png"), f"{name} produced no plot"
    if name == "04_colab_tpu.ipynb":
        found = re.search(r"Trained on all (\d+) (\w+) device", stdout_text(nb))
        assert found, "04_colab_tpu.ipynb did not report the devices it trained on"
        count, platform = int(found.group(1)), found.group(2)
        if platform == "cpu":
            assert count == HOST_DEVICES, f"expected {HOST_DEVICES} CPU devices, ran on {count}"
