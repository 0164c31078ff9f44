"""The documentation site (#18.1): it builds strictly, and it documents every public name.

`mkdocs build --strict` turns every warning into a failure: a `:::` directive naming
nothing, a broken cross-reference or link, a page missing from the nav, a docstring that
griffe cannot parse. The build reads the sources statically and downloads nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

import kopt
import kopt.functional
import kopt.interop.flax
import kopt.interop.keras
import kopt.optimizers
import kopt.optimizers.schedules
import kopt.schedules
import kopt.stateful

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = [kopt, kopt.functional, kopt.optimizers, kopt.optimizers.schedules, kopt.schedules,
                  kopt.stateful, kopt.interop.keras, kopt.interop.flax]
_DIRECTIVE = re.compile(r"^::: *(\S+)[ \t]*\n((?:(?:[ \t]+.*)?\n)*)", re.M)


def _mkdocs(config: pathlib.Path, site: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _resolve(path: str):
    """The object `path` names, as griffe reads it: the longest importable module first."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        # `kopt.functional.adam` is a module here, as for griffe (the package's attribute
        # of that name is the function `adam`, documented as `kopt.functional.adam.adam`).
        obj = sys.modules[".".join(parts[:i])]
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def directives() -> list[tuple[str, str, list[str] | None]]:
    """(page, identifier, members listed in its options or None) for every `:::`."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for m in _DIRECTIVE.finditer(page.read_text()):
            block = yaml.safe_load(m.group(2)) if m.group(2).strip() else None
            members = ((block or {}).get("options") or {}).get("members")
            found.append((str(page.relative_to(DOCS)), m.group(1),
                          members if isinstance(members, list) else None))
    return found


def undocumented(found) -> list[str]:
    """Every public name that no directive renders (by identity; constants by path)."""
    objects, paths = set(), set()
    for _, ident, members in found:
        obj = _resolve(ident)
        objects.add(id(obj))
        paths.add(ident)
        for member in members or []:
            objects.add(id(getattr(obj, member)))
            paths.add(f"{ident}.{member}")
    missing = []
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, (bool, int, float, str)):
                ok = any(p.rsplit(".", 1)[-1] == name and getattr(_resolve(p.rsplit(".", 1)[0]), name,
                                                                   None) == obj for p in paths)
            else:
                ok = id(obj) in objects
            if not ok:
                missing.append(f"{module.__name__}.{name}")
    return missing


def test_site_builds_strictly(tmp_path):
    result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    adam = (tmp_path / "site" / "reference" / "functional" / "index.html").read_text()
    assert 'id="kopt.functional.adam.adam"' in adam
    assert 'class="arithmatex"' in adam and "\\begin{aligned}" in adam   # maths rendered
    signature = adam[adam.index('id="kopt.functional.adam.adam"'):]
    signature = re.sub(r"<[^>]+>", "", signature[:signature.index("</code></pre>")])
    assert "global_clipnorm=None" in signature and "options" not in signature   # as at runtime
    stateful = (tmp_path / "site" / "reference" / "stateful" / "index.html").read_text()
    stateful = re.sub(r"<[^>]+>", "", stateful[stateful.index('id="kopt.optimizers.Adam"'):])
    assert "beta_1=0.9" in stateful[:3000]   # the constructor derived from the factory
    for page in (tmp_path / "site").rglob("*.html"):
        text = page.read_text()
        assert ".. math::" not in text and ":math:`" not in text, page   # no raw reST left
        assert "<p>&gt;&gt;&gt; " not in text, page   # doctest examples render as code
    for guide in ("coming-from-optax", "coming-from-keras", "getting-started"):
        assert (tmp_path / "site" / guide / "index.html").exists()


def _broken_site(tmp_path, page_text):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page_text)
    python = config["plugins"][-1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT)]
    python["options"]["extensions"] = [str(ROOT / "docs/_ext/griffe_kopt.py") + ":KoptDocstrings"]
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}], extra_javascript=[])
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return _mkdocs(path, tmp_path / "site")


@pytest.mark.parametrize("page_text,needle", [
    ("# x\n\n::: kopt.functional.no_such_transform\n", "no_such_transform"),
    ("# x\n\nSee [adam][kopt.functional.no_such_reference].\n", "no_such_reference"),
], ids=["directive", "cross-reference"])
def test_strict_build_fails_on_a_broken_reference(tmp_path, page_text, needle):
    result = _broken_site(tmp_path, page_text)
    assert result.returncode != 0
    assert needle in result.stdout + result.stderr


def test_every_public_name_has_a_reference_entry():
    found = directives()
    assert len(found) >= 100, len(found)
    assert all(page.startswith("reference") for page, _, _ in found)
    missing = undocumented(found)
    assert not missing, f"public names that no docs/reference page documents: {missing}"


def test_a_missing_reference_entry_is_named():
    """The check above is not vacuous: drop one directive and it names what is missing."""
    found = [d for d in directives() if d[1] not in ("kopt.optimizers.Lamb", "kopt.functional.lamb.lamb")]
    assert undocumented(found) == ["kopt.Lamb", "kopt.functional.lamb", "kopt.optimizers.Lamb",
                                   "kopt.stateful.Lamb"]


def test_getting_started_runs():
    """The getting-started page's blocks run, in order, and its two layers agree."""
    text = (DOCS / "getting-started.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)
    assert len(blocks) == 4
    namespace = {"__name__": "getting_started"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"<getting-started.md block {i}>", "exec"), namespace)


def test_docstring_rewrite_for_markdown():
    """The griffe extension's rewrite: reST maths to arithmatex, name lists, doctests."""
    spec = importlib.util.spec_from_file_location("griffe_kopt", DOCS / "_ext" / "griffe_kopt.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    doc = "\n".join([
        "Step :math:`t` of it.", "", ".. math::", "    a &= b \\\\", "    c &= `d` ``e``", "",
        "Args:", "  x: one.", "  y, z,", "    w: shared", "  in `f`.", "", "Text:",
        "  >>> 1 + 1", "  2", "",
    ])
    out = ext.rewrite(doc).splitlines()
    assert out[0] == "Step \\(t\\) of it."
    assert ["$$", "\\begin{aligned}", "a &= b \\\\", "c &= \\texttt{d} e", "\\end{aligned}",
            "$$"] == [line for line in out if line][1:7]
    assert "  y, z, w: shared" in out and "      in `f`." in out
    assert out[out.index("  ```pycon") + 1:out.index("  ```pycon") + 4] == ["  >>> 1 + 1", "  2", "  ```"]
