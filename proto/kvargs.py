"""``key=value`` arguments typed by a payload's declaration (``auxipc send DEV EV
addr=02:00:00:00:00:01 up=true``): pure.

Each value is read as its field declares: ints in any base Python reads
(``33024``, ``0x8100``), bools as true/false/yes/no/on/off/1/0, enums by member
name (or number), strings as given, a MAC field as ``aa:bb:cc:dd:ee:ff``, other
bytes as hex or a JSON list, arrays, maps and structs as JSON. A dotted key sets
a field of a nested struct (``ets.willing=true``). The result is a plain dict the
payload's own validation then checks strictly (ranges, lengths, sums); this
module only refuses what it cannot read, EINVAL naming the key.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .errno import AuxError, Errno
from .schema import Array, Bool, Bytes, Enum, Field, Int, Map, Nested, Payload, Str

TRUE, FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _bad(key: str, why: str) -> AuxError:
    return AuxError(Errno.EINVAL, f"{key}: {why}")


def _json(key: str, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(key, f"expected {what} as JSON, got {text!r} ({exc.msg})") from None


def value_of(field: Field, key: str, text: str) -> Any:
    """``text`` read as ``field`` declares it (not yet range-checked)."""
    match field:
        case Bool():
            if text.lower() in TRUE | FALSE:
                return text.lower() in TRUE
            raise _bad(key, f"expected a bool (true/false), got {text!r}")
        case Int():
            try:
                return int(text, 0)
            except ValueError:
                raise _bad(key, f"expected an int, got {text!r}") from None
        case Enum():
            if text.lstrip("-").isdigit():
                return int(text)
            if text.upper() not in field.enum.__members__:
                raise _bad(key, f"{text!r} is not one of {', '.join(field.enum.__members__)}")
            return text.upper()
        case Str():
            return text
        case Bytes():
            if field.size == 6 and ":" in text:
                return text
            if text.startswith("["):
                return _json(key, text, "a list of byte values")
            try:
                return list(bytes.fromhex(text))
            except ValueError:
                raise _bad(key, f"expected hex bytes or a JSON list, got {text!r}") from None
        case Array():
            return _json(key, text, "an array")
        case Nested():
            return _json(key, text, f"a {field.struct.__name__} object")
        case Map():
            return _json(key, text, "an object")
    return _json(key, text, field.kind)


def _field(cls: type[Payload], name: str, key: str) -> Field:
    if name in cls.fields:
        return cls.fields[name]
    known = list(cls.fields)
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"closest: {near[0]}; " if near else ""
    raise _bad(key, f"{cls.__name__} has no field {name!r} ({hint}fields: {', '.join(known) or 'none'})")


def assign(cls: type[Payload], pairs: list[str], into: dict | None = None) -> dict:
    """The payload map ``pairs`` (``key=value``) describe, over ``into`` (e.g. a JSON file's)."""
    out: dict = dict(into or {})
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise AuxError(Errno.EINVAL, f"{pair!r}: expected key=value (fields of {cls.__name__}: "
                           f"{', '.join(cls.fields) or 'none'})")
        *outer, last = key.split(".")
        target, struct = out, cls
        for part in outer:
            field = _field(struct, part, key)
            if not isinstance(field, Nested):
                raise _bad(key, f"{part} is not a struct ({field.kind}): it has no fields")
            inner = target.get(part)
            target[part] = inner = dict(inner) if isinstance(inner, dict) else {}
            target, struct = inner, field.struct
        target[last] = value_of(_field(struct, last, key), key, text)
    return out
