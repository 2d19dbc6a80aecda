"""Overrides of a nested dataclass config, typed by its fields: the one parser behind every `--set`,
the notebooks' parameters, `scripts/run_pipeline.py -p` and the sweep.

    apply_overrides(train_preset("tiny"), ["steps=1e3", "mmd_weight=100", "mmd.align=none"])
    apply_overrides(PIPELINE_PRESETS["tiny"], {"codec_steps": 600, "lambdas": "0,100"})

Items are `KEY=VALUE` strings or a dict {KEY: value}. KEY is a field or a dotted path into nested
configs (`mmd.align`, `codec.model.quantizer.n_q`); a config class may declare short names for paths
in a class attribute `ALIASES` (`mmd_align` -> `mmd.align`; the notebooks' flat parameters). A
string is parsed as its field's type (int, float, bool, str, None where allowed, tuples as JSON lists
or "a,b"), so `steps=1e3` is 1000 and `mmd_weight=nan` is refused; other values are checked against
the type (a scalar where a tuple is expected becomes a one-element tuple). A field that holds a config
or None (`discriminator`) takes `none` or the name of one of its class's presets (`paper`). Nested
groups keep their other values; every config's own checks see the final combination once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing


class OverrideError(ValueError):
    """A key that does not exist or a value of the wrong type; the message names both."""


def apply_overrides(cfg, items: list[str] | dict, aliases: dict[str, str] | None = None):
    """A copy of the dataclass `cfg` with `items` applied (see the module doc)."""
    aliases = aliases if aliases is not None else getattr(type(cfg), "ALIASES", {})
    if not isinstance(items, dict):
        pairs = {}
        for item in items:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise OverrideError(f"--set {item!r}: expected KEY=VALUE")
            pairs[key] = text
        items = pairs
    tree: dict = {}
    for key, value in items.items():
        _set(tree, cfg, aliases.get(key, key).split("."), value, key)
    return _apply(cfg, tree)


def field_type(cfg, name: str):
    """The annotation of field `name` of the dataclass `cfg`, resolved (postponed annotations)."""
    return typing.get_type_hints(type(cfg))[name]


def _set(tree: dict, cfg, path: list[str], value, key: str) -> None:
    fields = {f.name for f in dataclasses.fields(cfg)}
    if path[0] not in fields:
        raise OverrideError(f"{key}: unknown parameter {path[0]!r} of {type(cfg).__name__}; "
                            f"choose one of {sorted(fields | set(getattr(type(cfg), 'ALIASES', {})))}")
    current = getattr(cfg, path[0])
    if len(path) > 1:
        if current is None:
            raise OverrideError(f"{key}: {path[0]} is off (None) in this config; set {path[0]} first")
        if not dataclasses.is_dataclass(current):
            raise OverrideError(f"{key}: {path[0]} has no sub-settings")
        _set(tree.setdefault(path[0], {}), current, path[1:], value, key)
        return
    kind = field_type(cfg, path[0])
    if dataclasses.is_dataclass(current) and not _is_config_type(kind):
        raise OverrideError(f"{key}: {path[0]} is a group of settings; set one of them, "
                            f"e.g. {key}.{dataclasses.fields(current)[0].name}=...")
    tree[path[0]] = convert(key, value, kind)


def _is_config_type(kind) -> bool:
    """`SomeConfig | None`: a field a whole config (or None) may replace."""
    options = typing.get_args(kind) or (kind,)
    return type(None) in options and any(dataclasses.is_dataclass(o) for o in options)


def convert(name: str, value, kind):
    """`value` (a string to parse, or a Python value) as a value of the annotation `kind`."""
    options = [o for o in (typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _UnionType) else (kind,))]
    optional = type(None) in options
    base = next((o for o in options if o is not type(None)), type(None))
    text = value.strip() if isinstance(value, str) else None
    if optional and (value is None or (text is not None and text.lower() in ("none", "null"))):
        return None

    def fail(what: str):
        raise OverrideError(f"{name}={value!r}: {what}" + (" or None" if optional else ""))

    if dataclasses.is_dataclass(base):
        presets = sorted(k for k, v in vars(base).items() if isinstance(v, classmethod))
        if isinstance(value, base):
            return value
        if text in presets:
            return getattr(base, text)()
        raise OverrideError(f"{name}={value!r}: expected none or one of {presets}")
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in ("true", "1", "yes", "false", "0", "no"):
            return text.lower() in ("true", "1", "yes")
        fail("expected true or false")
    if base in (int, float):  # a number: text parsed as float first, so that steps=1e3 is 1000
        what = "an integer" if base is int else "a number"
        v = value
        if text is not None:
            try:
                v = float(text)
            except ValueError:
                fail(f"expected {what}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"expected {what}")
        if not math.isfinite(v):
            fail("expected an integer" if base is int else "expected a finite number")
        if base is int and (v != int(v) or abs(v) >= 2**63):
            fail("expected an integer")
        return base(v)
    if base is str:
        if not isinstance(value, str):
            fail("expected a string")
        return value
    if origin is tuple:
        items = value
        if text is not None:
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError:
                    fail("not a valid list; write e.g. [0, 100]")
            else:
                items = [s.strip() for s in text.split(",") if s.strip()]
        elif not isinstance(value, (list, tuple)):
            items = [value]
        if not isinstance(items, list | tuple):
            fail("expected a list, e.g. [0.5, 0.9] or 0.5,0.9")
        if not items:
            fail("is empty: give at least one value")
        inner = typing.get_args(base)[0]
        return tuple(convert(name, x, inner) for x in items)
    if origin in (dict, list) or base in (dict, list):
        if text is None:
            return value
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            fail("expected JSON, e.g. [[0, 1], [2, 3]]")
    fail(f"cannot set a field of type {kind} here")


_UnionType = type(int | None)


def _apply(cfg, tree: dict):
    """dataclasses.replace, nested groups first (each config checks its final values once)."""
    return dataclasses.replace(cfg, **{k: _apply(getattr(cfg, k), v) if isinstance(v, dict) and
                                       dataclasses.is_dataclass(getattr(cfg, k)) else v for k, v in tree.items()})
