"""The config-tree checks of `deserialize` and every `from_config`: bounded, and keys named.

Configs are data: `deserialize` only ever looks names up in kopt's own registries
(`kopt.stateful.registry`, `kopt.schedules`), never imports a module or resolves a dotted
path. These bounds keep a hostile or corrupt config from costing more than a clear error:
nesting depth, and the number of dict/list entries walked. This module imports nothing of
kopt, so `kopt.stateful.optimizer` and `kopt.stateful.serialization` both use it.
"""

from __future__ import annotations

__all__ = ["check_config_tree", "MAX_CONFIG_DEPTH", "MAX_CONFIG_ENTRIES"]

MAX_CONFIG_DEPTH = 64
MAX_CONFIG_ENTRIES = 100_000


def check_config_tree(config, where: str = "config") -> None:
    """Raise if `config` is nested too deeply, too large, or has a non-string dict key.

    Walks the dicts, lists and tuples of `config` without recursion, so a config nested
    thousands of levels deep (or one that contains itself) gives a `ValueError` naming the
    path where the limit was reached, never a `RecursionError`. A dict key that is not a
    string is a `TypeError` naming its path.
    """
    stack = [(config, where, 0)]
    entries = 0
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, (list, tuple)):
            items = list(enumerate(node))
        else:
            continue
        if depth >= MAX_CONFIG_DEPTH:
            raise ValueError(
                f"{path}: the config is nested more than {MAX_CONFIG_DEPTH} levels deep; "
                "an optimizer config is never that deep. Received a nested "
                f"{type(node).__name__} at {path}.")
        entries += len(items)
        if entries > MAX_CONFIG_ENTRIES:
            raise ValueError(
                f"{where}: the config has more than {MAX_CONFIG_ENTRIES} entries in its "
                f"nested dicts and lists (limit reached at {path}).")
        for key, value in items:
            if isinstance(node, dict) and not isinstance(key, str):
                raise TypeError(
                    f"{path}: config keys must be strings. Received key {key!r} of type "
                    f"{type(key).__name__}.")
            stack.append((value, f"{path}[{key!r}]", depth + 1))
