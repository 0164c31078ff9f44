"""A griffe extension for the docs site: kopt's docstrings, rewritten for Markdown.

kopt's docstrings are Google style with two reStructuredText habits, which Markdown does
not know: maths as `.. math::` blocks and `:math:` roles, and arguments that share one
description listed together (`clipnorm, clipvalue, global_clipnorm: ...`, sometimes over
several lines). This extension rewrites both before griffe parses the docstring:
`.. math::` becomes a `$$` block (an `aligned` environment when the body aligns with `&`
or breaks lines with `\\\\`), `:math:` becomes `\\( ... \\)`, both rendered by
pymdownx.arithmatex and MathJax; a list of names becomes one Args entry; and doctest
examples are fenced as `pycon` code wherever they stand (griffe only recognises them
inside an `Examples:` section). The source
docstrings stay as they are (`help()` and the doctests read them).
"""

from __future__ import annotations

import importlib
import inspect
import re

import griffe

_ROLE = re.compile(r":math:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]+)``")                       # a reST literal: plain text in TeX
_CODE = re.compile(r"`([^`]+)`")                            # a Markdown code span: \texttt
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Attributes):\s*$")
_NAME_LIST = re.compile(r"^[\w*]+(,\s*[\w*]+)*,\s*$")     # "a, b, c," awaiting more names
_ITEM = re.compile(r"^[\w*][\w*, ]*(\s\([^)]*\))?:(\s|$)")  # "name:", "a, b (type):"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != ".. math::":
            out.append(line)
            i += 1
            continue
        pad = " " * _indent(line)
        body = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():   # blank lines after the block stay
            body.pop()
            i -= 1
        text = [_CODE.sub(r"\\texttt{\1}", _LITERAL.sub(r"\1", b.strip()))
                for b in body if b.strip()]
        aligned = any("&" in t or t.endswith("\\\\") for t in text)
        inner = ["\\begin{aligned}", *text, "\\end{aligned}"] if aligned else text
        out += ["", *(pad + t for t in ["$$", *inner, "$$"]), ""]
    return out


def _doctest_fences(lines: list[str]) -> list[str]:
    """Fence each run of doctest lines (`>>>` up to a blank line) as a `pycon` block."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        pad = " " * _indent(lines[i])
        out += ["", pad + "```pycon"]
        while i < len(lines) and lines[i].strip():
            out.append(pad + lines[i][len(pad):] if lines[i].startswith(pad) else lines[i])
            i += 1
        out += [pad + "```", ""]
    return out


def _name_lists(lines: list[str]) -> list[str]:
    out: list[str] = []
    section = None   # indentation of the current Args-like section header, or None
    item = None      # indentation of its items
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _SECTION.match(line):
            section, item = _indent(line), None
            out.append(line)
            i += 1
            continue
        if section is not None and stripped and _indent(line) <= section:
            section = None
        if section is None or not stripped:
            out.append(line)
            i += 1
            continue
        if item is None:
            item = _indent(line)
        if _indent(line) == item and _NAME_LIST.match(stripped):
            # One entry over several lines: join the names up to the one with the colon,
            # then indent what follows at the item's level as the entry's continuation.
            joined = stripped
            i += 1
            while (i < len(lines) and lines[i].strip() and _indent(lines[i]) >= item
                   and ":" not in joined):
                joined += " " + lines[i].strip()
                i += 1
            out.append(" " * item + joined)
            while (i < len(lines) and lines[i].strip() and _indent(lines[i]) == item
                   and not _ITEM.match(lines[i].strip())):
                out.append(" " * (item + 4) + lines[i].strip())
                i += 1
            continue
        out.append(line)
        i += 1
    return out


def rewrite(text: str) -> str:
    """Return `text` with its maths and name lists in the form the site renders."""
    lines = _doctest_fences(_name_lists(_math_blocks(text.splitlines())))
    return _ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", "\n".join(lines))


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _runtime_parameters(obj: griffe.Object, static: griffe.Parameters | None):
    """griffe parameters of `inspect.signature` of the live object, or None."""
    try:
        live = getattr(importlib.import_module(obj.module.path), obj.name)
        signature = inspect.signature(live)
    except Exception:   # noqa: BLE001 - keep griffe's static reading
        return None
    old = {p.name: p for p in static} if static is not None else {}
    params = []
    for p in signature.parameters.values():
        annotation = old[p.name].annotation if p.name in old else None
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        params.append(griffe.Parameter(p.name, annotation=annotation, kind=_KINDS[p.kind],
                                       default=default))
    return griffe.Parameters(*params)


class KoptDocstrings(griffe.Extension):
    """Rewrites every docstring with `rewrite`, and shows generated signatures."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        del kwargs
        if pkg.name != "kopt":
            return
        for module in _modules(pkg):
            for member in list(module.members.values()):
                if member.is_alias:
                    continue
                if member.is_function and any("with_options" in str(d.value)
                                              for d in member.decorators):
                    params = _runtime_parameters(member, member.parameters)
                    if params is not None:
                        member.parameters = params
                elif (member.is_class and module.path.startswith("kopt.stateful.")
                      and "__init__" not in member.members):
                    params = _runtime_parameters(member, None)
                    if params is not None:
                        init = griffe.Function("__init__", parameters=params)
                        member.set_member("__init__", init)


def _modules(module: griffe.Module):
    yield module
    for member in module.members.values():
        if not member.is_alias and member.is_module:
            yield from _modules(member)
