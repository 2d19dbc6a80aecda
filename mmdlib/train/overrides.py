"""`KEY=VALUE` overrides of a dataclass config, typed by its fields: the command lines' `--set`.

    apply_overrides(train_preset("tiny"), ["steps=1e3", "mmd_weight=100", "mmd.align=none"])

Each value is parsed as its field's type (int, float, bool, str, None where allowed, tuples as
JSON lists), so `steps=1e3` is 1000, `mmd_weight=nan` is refused, and a typo names the keys that
exist. Nested configs take dotted keys (`mmd.align=none`) and keep the rest of their preset's
values. `mmd_align=X` is an alias of `mmd.align=X`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing

ALIASES = {"mmd_align": "mmd.align"}


def _parse(name: str, text: str, kind: str):
    """`text` as a value of the annotation `kind` (a string: the modules use postponed annotations)."""
    options = [k.strip() for k in kind.split("|")]
    if "None" in options and text.lower() in ("none", "null"):
        return None
    base = next(k for k in options if k != "None")

    def fail(what: str):
        raise ValueError(f"--set {name}={text!r}: {what}")

    if base == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        fail("expected true or false")
    if base == "int":
        try:
            v = float(text)
        except ValueError:
            fail("expected an integer")
        if not math.isfinite(v) or v != int(v) or abs(v) >= 2**63:
            fail("expected an integer")
        return int(v)
    if base == "float":
        try:
            v = float(text)
        except ValueError:
            fail("expected a number")
        if not math.isfinite(v):
            fail("expected a finite number")
        return v
    if base == "str":
        return text
    if base.startswith("tuple"):
        try:
            v = json.loads(text)
        except json.JSONDecodeError:
            v = [s for s in text.split(",") if s]
        if not isinstance(v, list):
            fail("expected a list, e.g. [0.5,0.9] or 0.5,0.9")
        inner = base[base.index("[") + 1 : -1].split(",")[0].strip()
        return tuple(_parse(name, str(x), inner) for x in v)
    if base.startswith(("dict", "list")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            fail("expected JSON, e.g. [[0, 1], [2, 3]]")
    fail(f"cannot set a field of type {kind} from the command line")


def apply_overrides(cfg, items: list[str]):
    """A copy of the dataclass `cfg` with each `KEY=VALUE` of `items` applied (see the module doc).
    All values are parsed first and applied at once, so the config's own checks see the final
    combination (e.g. `steps=2 mmd_weight=10 mmd_start=1`), whatever the order of the items."""
    tree = _Group()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        _parse_into(tree, cfg, ALIASES.get(key, key).split("."), text, key)
    return _apply(cfg, tree)


class _Group(dict):
    """The parsed overrides of one (nested) config: field name -> value or _Group."""


def _parse_into(tree: _Group, cfg, path: list[str], text: str, name: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if path[0] not in fields:
        raise ValueError(f"--set {name}: unknown parameter {path[0]!r} of {type(cfg).__name__}; "
                         f"choose one of {sorted(fields)}")
    current = getattr(cfg, path[0])
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ValueError(f"--set {name}: {path[0]} is a group of settings; set one of them, "
                             f"e.g. {path[0]}.{dataclasses.fields(current)[0].name}=...")
        _parse_into(tree.setdefault(path[0], _Group()), current, path[1:], text, name)
        return
    if len(path) > 1:
        raise ValueError(f"--set {name}: {path[0]} has no sub-settings")
    kind = fields[path[0]].type
    kind = kind if isinstance(kind, str) else typing.get_type_hints(type(cfg))[path[0]].__name__
    tree[path[0]] = _parse(name, text, kind)


def _apply(cfg, tree: _Group):
    """dataclasses.replace, nested groups first (each config checks its final values once)."""
    return dataclasses.replace(cfg, **{k: _apply(getattr(cfg, k), v) if isinstance(v, _Group) else v
                                       for k, v in tree.items()})
