"""Validators compiled from a payload's declaration (schema.py): for valid input,
straight-line code instead of a walk over the fields, and msgspec Structs that
decode and check msgpack bytes in one C pass.

``struct_for(cls)`` derives the Struct (see below; envelope.decode, load_payload
and check_payload use it). ``compile_payload(cls)`` gives the class ``_fill(self, obj)`` (check a decoded
map and store it), ``_to_wire(self)``, ``_flat`` (every field a scalar: the
instance's ``__dict__`` is its wire map) and, for flat types, a keyword
constructor. Each raises ``_Slow`` on any doubt; the caller then takes the
field-by-field path of schema.py, which finds and names the fault.
"""

from __future__ import annotations

import keyword
from typing import TYPE_CHECKING, Annotated, Any, Literal

from .errno import AuxError
from .fields import MISSING, Array, Bool, Bytes, Enum, Float, Int, Map, Nested, Str, _Slow

if TYPE_CHECKING:
    import msgspec

    from .schema import Payload

_INLINE = (Int, Bool, Str, Enum, Bytes)    # kinds whose strict and lenient checks agree


def _attr(name: str) -> str:
    """Source reading field ``name`` of ``self`` (a keyword, such as ``from``, is no attribute name)."""
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"self.{name}"
    return f"self.__dict__[{name!r}]"


def compile_payload(cls: type[Payload]):
    """Build ``cls._fill(self, obj)`` and ``cls._to_wire(self)``, and for payloads of
    scalar fields a keyword constructor: the declaration's checks and conversions as
    straight-line code, for valid input (about 5x faster than walking the fields).
    Field kinds it does not inline call their own ``validate``; any doubt raises
    _Slow, and the field-by-field path decides and names the fault. ``cls._flat``:
    every field is a scalar, so the instance's ``__dict__`` is its wire map."""
    env: dict[str, Any] = {"Slow": _Slow, "MISSING": MISSING, "AuxError": AuxError}
    checks: list[str] = []
    wire: list[str] = []
    f: Any                  # a Field of the kind just tested (type(f) is Int, ...)
    for i, (name, f) in enumerate(cls.fields.items()):
        env[f"F{i}"] = f
        env[f"D{i}"] = f.default
        checks.append("    if v is MISSING:")
        checks.append("        raise Slow" if f.required else f"        v = D{i}")
        checks.append("    else:")
        kind = type(f)
        if kind is Int:
            cond = f"type(v) is not int or not {f.min} <= v <= {f.max}"
            if f.choices:
                env[f"C{i}"] = frozenset(f.choices)
                cond += f" or v not in C{i}"
            checks += [f"        if {cond}:", "            raise Slow"]
            wire.append(f"{name!r}: {_attr(name)}")
        elif kind is Bool:
            checks += ["        if type(v) is not bool:", "            raise Slow"]
            wire.append(f"{name!r}: {_attr(name)}")
        elif kind is Str:
            cond = f"type(v) is not str or len(v) > {f.max_len}"
            if f.choices:
                env[f"C{i}"] = frozenset(f.choices)
                cond += f" or v not in C{i}"
            checks += [f"        if {cond}:", "            raise Slow"]
            wire.append(f"{name!r}: {_attr(name)}")
        elif kind is Bytes:
            size = f"len(v) != {f.size}" if f.size is not None else f"len(v) > {f.max_len}"
            checks += [f"        if type(v) is not bytes or {size}:", "            raise Slow"]
            wire.append(f"{name!r}: {_attr(name)}")
        elif kind is Enum:
            env[f"E{i}"] = f.enum._value2member_map_
            env[f"T{i}"] = f.enum
            checks += [f"        v = E{i}.get(v) if type(v) is int or type(v) is T{i} else None",
                       "        if v is None:", "            raise Slow"]
            wire.append(f"{name!r}: int({_attr(name)})")
        else:
            checks += ["        try:", f"            v = F{i}.validate(v, '', False)",
                       "        except AuxError:", "            raise Slow from None"]
            wire.append(f"{name!r}: F{i}.to_wire({_attr(name)})")
        checks.append(f"    put({name!r}, v)")
    names = list(cls.fields)
    lines = ["def fill(self, obj):",
             "    for k in obj:",
             "        if type(k) is not str:",
             "            raise Slow",
             "    put = self.__dict__.__setitem__     # past the immutability guard, as _set does"]
    for i, name in enumerate(names):
        lines.append(f"    v = obj.get({name!r}, MISSING)")
        lines += _field_block(checks, i)
    lines.append("    return self")
    lines += ["def to_wire(self):", f"    return {{{', '.join(wire)}}}"]
    cls._flat = all(type(f) in _INLINE for f in cls.fields.values())
    if cls._flat and names and all(n.isidentifier() and not keyword.iskeyword(n) and n != "self" for n in names):
        params = "".join(f"{n}=MISSING, " for n in names)
        given = ", ".join(f"({n!r}, {n})" for n in names)
        lines += [f"def init(self, *, {params}**extra):",
                  "    if not extra:",
                  "        put = self.__dict__.__setitem__",
                  "        try:"]
        for i, name in enumerate(names):
            lines.append(f"            v = {name}")
            lines += ["        " + line for line in _field_block(checks, i)]
        lines += ["            return",
                  "        except Slow:",
                  "            pass",
                  f"    values = {{k: v for k, v in ({given}{',' if len(names) == 1 else ''}) if v is not MISSING}}",
                  "    values.update(extra)",
                  "    self._set(values, '$.payload', strict=True)"]
    exec("\n".join(lines), env)
    cls._fill, cls._to_wire = env["fill"], env["to_wire"]
    if "init" in env:
        cls.__init__ = env["init"]  # type: ignore[method-assign]
    return cls._fill


def _field_block(checks: list[str], i: int) -> list[str]:
    """The lines of ``checks`` that check and store field ``i`` (each block starts
    with the MISSING test)."""
    starts = [n for n, line in enumerate(checks) if line == "    if v is MISSING:"] + [len(checks)]
    return checks[starts[i]:starts[i + 1]]


# ---- msgspec Structs derived from the declaration -------------------------------------------
#
# ``struct_for(cls)`` derives a msgspec Struct from a payload's (or header's) fields: msgpack
# bytes decode and validate in one C pass into it (about 10x faster than unpacking and then
# checking). It accepts a subset of what the declaration accepts, never more: unknown keys,
# a non-empty free-form map, a ``total`` not met, or anything it cannot express make it fail,
# and the caller then takes the msgpack + field-by-field path, which accepts or names the
# fault exactly as before (so every error message stays the declaration's own).


class Compiled:
    """A payload type's Struct: ``decoder`` (msgpack bytes -> Struct), ``ok(s)`` (the rules
    msgspec cannot state: false sends the caller to the slow path) and ``conv(s)`` (the
    Struct as an instance of the declared type)."""

    __slots__ = ("struct", "decoder", "ok", "conv")

    def __init__(self, struct, ok, conv):
        self.struct, self.ok, self.conv = struct, ok, conv
        self.decoder = msgspec.msgpack.Decoder(struct)


_STRUCTS: dict[Any, Compiled | None] = {}   # payload type, or (header type, tag)
# Keys being derived now. Other threads of the process decode too (a runtime's heartbeat
# thread, the broker's async gate): one that asks for a Struct another is deriving takes
# the slow path this time, and every caller gets the one Struct stored first for a key
# (two for one header would make its tag ambiguous in the union).
_deriving: set = set()


def struct_for(cls: type[Payload], tag: int | None = None) -> Compiled | None:
    """The compiled Struct of a payload type (None where its rules cannot be stated, or
    while another thread derives it). With ``tag``: a header's Struct, tagged ``t`` = tag
    in the map, with the payload bytes ``p``."""
    key = (cls, tag) if tag is not None else cls
    compiled = _STRUCTS.get(key, MISSING)
    if compiled is not MISSING:
        return compiled
    if key in _deriving:
        return None
    # Imported here, not at the top: a process that never derives a Struct never imports it.
    global msgspec
    import msgspec
    _deriving.add(key)
    try:
        compiled = _derive(cls, tag)
    except _Busy:
        return None             # a nested type in the making: asked again next time
    except (_Unsupported, TypeError, ValueError):     # msgspec refuses a type it cannot decode
        compiled = None
    finally:
        _deriving.discard(key)
    return _STRUCTS.setdefault(key, compiled)


class _Busy(Exception):
    """A nested type's Struct is being derived (by another thread, or a cycle of types)."""


class _Unsupported(Exception):
    """A field kind or rule a Struct cannot state: the type keeps the slow path."""


I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1     # what msgpack (and msgspec) can carry


def _int_bounds(lo: int, hi: int) -> dict:
    """``Meta`` bounds for an Int field: msgspec takes bounds within int64, and a bound at the
    end of what msgpack carries is no bound (a u64 field: 0..2**64 - 1)."""
    bounds = {}
    if lo > I64_MIN:
        if lo > I64_MAX:
            raise _Unsupported
        bounds["ge"] = lo
    if hi < U64_MAX:
        if hi > I64_MAX or hi < I64_MIN:
            raise _Unsupported
        bounds["le"] = hi
    return bounds


def _nullable(t, f):
    return t | None if getattr(f, "nullable", False) else t


def _annotation(f, post: list[str], attr: str, env: dict, i: int):
    """The msgspec type of field ``f``; rules it cannot state go into ``post`` (source
    lines that fail the fast path) or raise _Unsupported."""
    kind = type(f)
    if kind is Int:
        if f.choices:
            if not all(f.min <= c <= f.max for c in f.choices):
                raise _Unsupported
            return _nullable(Literal[tuple(f.choices)], f)
        return _nullable(Annotated[int, msgspec.Meta(**_int_bounds(f.min, f.max))], f)
    if kind is Bool:
        return bool
    if kind is Str:
        if f.choices:
            if not all(len(c) <= f.max_len for c in f.choices):
                raise _Unsupported
            return _nullable(Literal[tuple(f.choices)], f)
        return _nullable(Annotated[str, msgspec.Meta(max_length=f.max_len)], f)
    if kind is Float:
        return Annotated[float, msgspec.Meta(ge=f.min, le=f.max)]
    if kind is Bytes:
        if f.size is not None:
            if f.size > f.max_len:
                raise _Unsupported
            return Annotated[bytes, msgspec.Meta(min_length=f.size, max_length=f.size)]
        return Annotated[bytes, msgspec.Meta(max_length=f.max_len)]
    if kind is Enum:
        return f.enum
    if kind is Map:
        post.append(f"    if s.{attr}: return False")      # keys and depth: the slow path checks them
        return Annotated[dict, msgspec.Meta(max_length=f.max_len)]
    if kind is Nested:
        if f.struct in _deriving:
            raise _Busy
        inner = struct_for(f.struct)
        if inner is None:
            raise _Unsupported if f.struct in _STRUCTS else _Busy
        env[f"K{i}"] = inner
        post.append(f"    v = s.{attr}")
        post.append(f"    if type(v) is K{i}.struct and not K{i}.ok(v): return False")
        return inner.struct | None if f.default is None else inner.struct
    if kind is Array:
        length = {"min_length": f.length, "max_length": min(f.length, f.max_len)} if f.length is not None \
            else {"max_length": f.max_len}
        item_post: list[str] = []
        item = _annotation(f.item, item_post, "x", env, i)
        if item_post:
            if type(f.item) is not Nested:
                raise _Unsupported
            post.append(f"    for x in s.{attr}:")
            post.append(f"        if not K{i}.ok(x): return False")
        if f.total is not None:
            post.append(f"    if sum(s.{attr}) != {f.total}: return False")
        return Annotated[tuple[item, ...], msgspec.Meta(**length)]     # type: ignore[valid-type]
    raise _Unsupported


def _derive(cls: type[Payload], tag: int | None) -> Compiled:
    env: dict[str, Any] = {"new": cls.__new__, "C": cls, "setdict": object.__setattr__}
    fields: list[tuple] = []
    rename: dict[str, str] = {}
    post: list[str] = []
    items: list[str] = []
    for i, (name, f) in enumerate(cls.fields.items()):
        attr = name if name.isidentifier() and not keyword.iskeyword(name) and name not in ("p", "t") else f"f{i}_"
        if attr != name:
            rename[attr] = name
        ann = _annotation(f, post, attr, env, i)
        fields.append((attr, ann) if f.required else (attr, ann, f.default))
        value = f"s.{attr}"
        if type(f) is Nested:
            value = f"(K{i}.conv(s.{attr}) if type(s.{attr}) is K{i}.struct else s.{attr})"
        elif type(f) is Array and type(f.item) is Nested:
            value = f"tuple([K{i}.conv(x) for x in s.{attr}])"
        items.append(f"{name!r}: {value}")
    opts: dict[str, Any] = {}
    if tag is not None:
        fields.append(("p", bytes | None, None))
        opts = {"tag_field": "t", "tag": tag}
    struct = msgspec.defstruct(f"{cls.__name__}Struct", fields, kw_only=True, forbid_unknown_fields=True,
                               rename=rename or None, **opts)
    env["S"] = struct
    lines = ["def ok(s):", *post, "    return True",
             "def conv(s):",
             "    o = new(C)",
             f"    setdict(o, '__dict__', {{{', '.join(items)}}})",
             "    return o"]
    exec("\n".join(lines), env)
    return Compiled(struct, env["ok"], env["conv"])
