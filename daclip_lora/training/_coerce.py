"""Generic typed coercion of YAML data into dataclasses, with messages that name the key.

Nothing here knows the UIR schema (:mod:`daclip_lora.training.options` does): a :class:`Context` says which
dataclasses are *strict* (an unknown key is an error) and collects warnings and ignored keys, so the loader
stays pure. Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Any``, ``Optional``/``Union``,
``Literal``, ``List[T]``, ``Dict[str, T]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Callable, Dict, FrozenSet, List, Literal, Optional, Sequence, Union

import yaml

from .._utils.suggest import suggest

__all__ = ["Context", "OptionsError", "build", "coerce", "dataclasses_in", "parse_override_value", "resolve_field",
           "type_name"]

_NONE = type(None)
_SCALARS = (bool, int, float, str)


class OptionsError(ValueError):
    """An options file or override is invalid; the message names the key and the fix."""


class Context:
    """Collects warnings and ignored keys while building; knows which dataclasses are strict."""

    def __init__(self, source: str, strict: FrozenSet[type] = frozenset()):
        self.source = source
        self.strict = strict
        self.warnings: List[str] = []
        self.ignored: List[str] = []

    def error(self, key: str, message: str) -> OptionsError:
        return OptionsError(f"{self.source}: {key}: {message}")


def _is_mapping_type(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Dict)


def type_name(tp: Any) -> str:
    """How a type reads in a message (``an integer``, ``one of a, b``, ``a list of text``)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not _NONE)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (list, List):
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if _is_mapping_type(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "text"}.get(tp, str(tp))


def _union(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    args = typing.get_args(tp)
    if value is None and _NONE in args:
        return None
    options = [a for a in args if a is not _NONE]
    for a in options:  # exact type first (bool before str in Union[bool, str])
        if a in _SCALARS and type(value) is a:
            return value
    for a in options:  # a mapping given for a block: that block's own error names the bad key inside it
        if isinstance(value, dict) and _is_mapping_type(a):
            return coerce(value, a, key, ctx)
    for a in options:
        try:
            return coerce(value, a, key, ctx)
        except OptionsError:
            pass
    raise ctx.error(key, f"expected {type_name(tp)}, got {value!r}")


def _literal(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    args = typing.get_args(tp)
    if isinstance(value, bool) and ("yes" if value else "no") in args:  # YAML 1.1 reads a bare `no` as false
        value = "yes" if value else "no"
    if value not in args:
        raise ctx.error(key, f"expected one of {', '.join(map(str, args))}, got {value!r}."
                             f"{suggest(str(value), map(str, args))}")
    return value


def _list(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    if not isinstance(value, list):
        raise ctx.error(key, f"expected {type_name(tp)}, got {value!r} (write it as [a, b] or a '- item' list)")
    return [coerce(v, typing.get_args(tp)[0], f"{key}[{i}]", ctx) for i, v in enumerate(value)]


def _dict(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a mapping, got {value!r}")
    args = typing.get_args(tp)
    return {k: coerce(v, args[1], f"{key}.{k}", ctx) for k, v in value.items()} if args else dict(value)


def _bool(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    if isinstance(value, bool):
        return value
    raise ctx.error(key, f"expected true or false, got {value!r}")


def _number_from_text(value: str, tp: Any, key: str, ctx: Context) -> Any:
    try:
        number = tp(float(value)) if tp is int and re.fullmatch(r"[+-]?\d+(\.0*)?", value.strip()) else tp(value)
    except ValueError:
        raise ctx.error(key, f"expected {type_name(tp)}, got the text {value!r}") from None
    ctx.warnings.append(
        f"{key}: {value!r} is text in YAML (PyYAML reads numbers like 2e-4 without a dot as strings); "
        f"using {number!r}. Write 2.0e-4 or !!float 2e-4 to silence this."
    )
    return number


def _number(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    if isinstance(value, str):
        return _number_from_text(value, tp, key, ctx)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(key, f"expected {type_name(tp)}, got {value!r}")
    if tp is int and isinstance(value, float):
        if not value.is_integer():
            raise ctx.error(key, f"expected an integer, got {value!r}")
        return int(value)
    return tp(value)


def _str(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ctx.error(key, f"expected text, got {value!r}")


_BY_ORIGIN: Dict[Any, Callable[[Any, Any, str, Context], Any]] = {
    Union: _union, Literal: _literal, list: _list, List: _list, dict: _dict, Dict: _dict}
_BY_TYPE: Dict[Any, Callable[[Any, Any, str, Context], Any]] = {bool: _bool, int: _number, float: _number, str: _str}


def coerce(value: Any, tp: Any, key: str, ctx: Context) -> Any:
    """``value`` as type ``tp``; raises :class:`OptionsError` naming ``key``, what was expected and what came."""
    handler = _BY_ORIGIN.get(typing.get_origin(tp))
    if handler is not None:
        return handler(value, tp, key, ctx)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, ctx)
    handler = _BY_TYPE.get(tp)
    return value if handler is None else handler(value, tp, key, ctx)


def _unread_key(key: Any, value: Any, dotted: str, where: str, fields: Sequence[str], extra: Dict[str, Any],
                ctx: Context) -> None:
    """A key a lenient block does not read: kept in ``extra``, with a hint when it looks like a typo."""
    extra[key] = value
    ctx.ignored.append(dotted)
    close = difflib.get_close_matches(str(key), [f for f in fields if f != "extra"], n=1, cutoff=0.8)
    if close:  # a UIR key we do not read, or a typo of one we do
        ctx.warnings.append(f"{dotted}: not read by daclip_lora (kept, ignored); did you mean "
                            f"{where + '.' if where else ''}{close[0]}?")


def build(cls: type, data: Any, where: str, ctx: Context) -> Any:
    """A ``cls`` dataclass from a mapping; unknown keys are errors in strict classes, else kept in ``extra``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ctx.error(where or "top level", f"expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for key, value in data.items():
        _build_key(cls, key, value, where, hints, fields, kwargs, extra, ctx)
    missing = [n for n, f in fields.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs]
    if missing:
        raise ctx.error(f"{where}.{missing[0]}" if where else missing[0], "required key is missing")
    if "extra" in fields:
        kwargs["extra"] = extra
    try:
        return cls(**kwargs)
    except OptionsError:
        raise
    except ValueError as e:  # a __post_init__ check: its message names the key
        raise OptionsError(f"{ctx.source}: {e}") from None


def _build_key(cls: type, key: Any, value: Any, where: str, hints: Dict[str, Any], fields: Dict[str, Any],
               kwargs: Dict[str, Any], extra: Dict[str, Any], ctx: Context) -> None:
    """One key of a mapping being built into ``cls``: coerced into ``kwargs``, refused, or kept in ``extra``."""
    dotted = f"{where}.{key}" if where else str(key)
    strict = cls in ctx.strict
    if key in fields and key not in ("extra", "ignored", "source"):
        kwargs[key] = coerce(value, hints[key], dotted, ctx)
    elif strict:
        valid = [f for f in fields if f != "extra"]
        raise ctx.error(dotted, f"unknown key.{suggest(str(key), valid) or ' Valid keys: ' + ', '.join(valid)}")
    else:
        _unread_key(key, value, dotted, where, list(fields), extra, ctx)


def dataclasses_in(classes: Sequence[type]) -> FrozenSet[type]:
    """``classes`` and every dataclass their fields hold, at any depth (``Optional[X]``, ``List[X]``,
    ``Dict[str, X]`` included)."""
    seen: set = set()
    todo = list(classes)
    while todo:
        tp = todo.pop()
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if tp not in seen:
                seen.add(tp)
                todo.extend(typing.get_type_hints(tp).values())
        else:
            todo.extend(typing.get_args(tp))
    return frozenset(seen)


def _strip_optional(tp: Any) -> Any:
    while typing.get_origin(tp) is Union:
        tp = next(a for a in typing.get_args(tp) if a is not _NONE)
    return tp


def resolve_field(cls: Any, parts: Sequence[str], strict: FrozenSet[type] = frozenset(), where: str = "") -> Any:
    """The schema type at a dotted path (under ``where``, for messages), or ``None`` where it leaves the schema.

    Raises:
        OptionsError: an unknown key inside a strict dataclass.
    """
    tp = cls
    for part in parts:
        tp = _strip_optional(tp)
        if typing.get_origin(tp) in (dict, Dict):
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints or part == "extra":
            if tp in strict:
                valid = [h for h in hints if h != "extra"]
                raise OptionsError(f"--opt {'.'.join([where, *parts] if where else parts)}: unknown key {part!r}."
                                      f"{suggest(part, valid)}")
            return None
        tp = hints[part]
    return tp


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _override_scalar(text: str, base: Any) -> Any:
    if base is bool:
        lowered = text.strip().lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else text  # else: refused by coerce
    try:
        return base(text)
    except ValueError:
        return text  # refused with a clear message by the coercion


def parse_override_value(text: str, tp: Any) -> Any:
    """The value of ``--opt key=TEXT`` for a field of type ``tp`` (``null`` clears an optional value)."""
    base: Optional[Any] = tp
    while typing.get_origin(base) is Union:
        non_none = [a for a in typing.get_args(base) if a is not _NONE]
        if text.strip().lower() in ("null", "none", "~"):
            return None
        base = non_none[0] if len(non_none) == 1 else Any
    if base is str or typing.get_origin(base) is Literal:
        return text
    if base in (bool, int, float):
        return _override_scalar(text, base)
    return yaml.safe_load(text)
