"""Our own words for input that failed to decode or validate.

msgspec decides whether a value is valid; these functions only *explain* a failure, in the project's
words, so that a user's error message (and every test that checks one) stays the same whatever the
library's wording of the day. (A msgspec release once reworded its UTF-8 error and two tests failed
on a fresh install with nothing in the project changed.)

- :func:`describe_bad_json_line`: why one line of a JSONL file is not a JSON document.
- :func:`find_invalid`: where and why a decoded value does not fit a type (a ``msgspec.Struct``
  tree, with ``Annotated`` bounds, ``Literal`` choices, unions, lists and mappings).

Pure and cheap to import (msgspec only): the records reader, the offline scorer, the config loader and
the wire decoder all use it.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from typing import Annotated, Any, Literal

import msgspec

_SURROGATE = re.compile(r"\\u([dD][89abAB][0-9a-fA-F]{2})(?:\\u([dD][c-fC-F][0-9a-fA-F]{2}))?|"
                        r"\\u([dD][c-fC-F][0-9a-fA-F]{2})")


def describe_bad_json_line(lineno: int, raw: bytes | str) -> str:
    """Why line ``lineno`` (``raw``, as read) is not a JSON document: not UTF-8, a lone surrogate
    escape, a NaN/Infinity token, or malformed JSON near a position. Call it after a decoder refused
    the line; it re-reads the line itself rather than trusting the decoder's message."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"line {lineno} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    else:
        text = raw
    for m in _SURROGATE.finditer(text):
        if m.group(1) and m.group(2):  # a high + low pair is one valid character
            continue
        lone = m.group(1) or m.group(3)
        return (f"line {lineno} holds a lone surrogate escape '\\u{lone}' at offset {m.start()}: "
                "half of a UTF-16 pair is not a character")
    constants: list[str] = []

    def _constant(name: str) -> float:
        constants.append(name)
        return 0.0

    try:
        json.loads(text, parse_constant=_constant)
    except json.JSONDecodeError as e:
        return f"line {lineno} is not valid JSON (malformed at character {e.pos})"
    except RecursionError:
        return f"line {lineno} is not valid JSON (nested too deeply)"
    if constants:
        return f"line {lineno} is not valid JSON: {constants[0]} is not a JSON number"
    return f"line {lineno} is not a valid JSON document"


def _strip_annotated(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, [m for m in extras if isinstance(m, msgspec.Meta)]
    return tp, []


def describe_type(tp: Any) -> str:
    """What a type accepts, in words: "an integer >= 1", "one of 'sync', 'async'", "a list of …"."""
    base, metas = _strip_annotated(tp)
    bounds = []
    for m in metas:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v}")
        lo, hi = getattr(m, "min_length", None), getattr(m, "max_length", None)
        unit = "characters" if base is str else "items"
        if lo is not None and lo == hi:
            bounds.append(f"of exactly {lo} {unit}")
        else:
            bounds += [f"of {word} {v} {unit}" for word, v in (("at least", lo), ("at most", hi)) if v is not None]
    text = _describe_base(base)
    if bounds and typing.get_origin(base) in (list, tuple, set, frozenset):
        (item,) = typing.get_args(base)[:1] or (Any,)
        return f"a list {' and '.join(bounds)}, each {describe_type(item)}"
    return text + (" " + " and ".join(bounds) if bounds else "")


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          type(None): "null", bytes: "bytes"}


def _describe_base(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} items (" + ", ".join(describe_type(a) for a in args) + ")"
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return f"a mapping of {describe_type(args[1])}" if len(args) == 2 else "a mapping"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a mapping with keys " + ", ".join(tp.__struct_fields__)
    return getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fits(value: Any, tp: Any, strict: bool) -> bool:
    if isinstance(value, float) and not math.isfinite(value) and type(value) is not float:
        return False  # a marker for a number the JSON decoder refused as out of range
    try:
        msgspec.convert(value, tp, strict=strict)
    except (msgspec.ValidationError, TypeError, ValueError, RecursionError):
        return False
    return True


def find_invalid(value: Any, tp: Any, *, strict: bool = True, path: str = "$") -> tuple[str, str] | None:
    """The first place where ``value`` does not fit ``tp``: ``(path, reason)``, or None if it fits.

    ``path`` is JSON-path-like (``$.learner.lr``, ``$.key_frames[0].time``). Unknown and missing keys of
    a ``Struct`` are named; a leaf gets "must be <describe_type>, got <value> (<kind>)". A failure that
    lies in a Struct's own ``__post_init__`` check is not located here (None for that level): the
    caller keeps that check's own message.
    """
    base, _ = _strip_annotated(tp)
    if isinstance(base, type) and issubclass(base, msgspec.Struct) and isinstance(value, dict):
        hints = typing.get_type_hints(base, include_extras=True)
        fields = msgspec.structs.fields(base)
        names = {f.encode_name: f for f in fields}
        if getattr(base, "__struct_config__", None) is not None and base.__struct_config__.forbid_unknown_fields:
            for key in value:
                if key not in names:
                    return (f"{path}.{key}", f"unknown key; allowed keys here: {', '.join(names)}")
        for key, f in names.items():
            if key not in value:
                if f.required:
                    return (f"{path}.{key}", "required key is missing")
                continue
            found = find_invalid(value[key], hints[f.name], strict=strict, path=f"{path}.{key}")
            if found is not None:
                return found
        return None
    if _fits(value, tp, strict):
        return None
    if getattr(value, "literal", None) is not None and isinstance(value, float):
        return (path, f"{value.literal} is out of range for a number")
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        if len(options) == 1 and value is not None:
            return find_invalid(value, options[0], strict=strict, path=path)
    elif origin in (list, set, frozenset) and isinstance(value, list):
        (item_tp,) = typing.get_args(base)
        for i, item in enumerate(value):
            found = find_invalid(item, item_tp, strict=strict, path=f"{path}[{i}]")
            if found is not None:
                return found
    elif origin is tuple and isinstance(value, list) and typing.get_args(base)[-1:] != (Ellipsis,):
        args = typing.get_args(base)
        if len(value) != len(args):
            return (path, f"must be a list of {len(args)} items, got {len(value)}")
        for i, (item, item_tp) in enumerate(zip(value, args)):
            found = find_invalid(item, item_tp, strict=strict, path=f"{path}[{i}]")
            if found is not None:
                return found
    elif origin is dict and isinstance(value, dict):
        _, item_tp = typing.get_args(base)
        for key, item in value.items():
            found = find_invalid(item, item_tp, strict=strict, path=f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return (path, f"must be {describe_type(tp)}, got {_kind(value)}")
    if isinstance(value, dict | list) and origin not in (list, dict, tuple, set, frozenset, Literal):
        return (path, f"must be {describe_type(tp)}, got {_kind(value)}")
    return (path, f"must be {describe_type(tp)}, got {_show(value)} ({_kind(value)})")
