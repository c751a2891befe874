"""Declarative payload types.

A payload is declared once, as a class whose attributes are fields::

    class LinkChange(Payload):
        up = Bool()
        speed_mbps = Int(-1, 2**31 - 1, default=-1)

Everything else is derived from the declaration: validation of values built in
Python and of values decoded from the wire (errors name the path and the rule,
``$.payload.speed_mbps: expected int, got str``), the wire form (a msgpack map,
field name -> value), the JSON dump, the C struct and the Markdown table.

Evolution rule: fields are only ever appended, each later field with a default
and the schema minor version it appeared in (``since``). A receiver fills absent
fields from their defaults and ignores fields it does not know, so peers one
minor version apart interoperate.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Self

from .compiled import compile_payload
from .fields import (
    MISSING,
    Array,
    Bool,
    Bytes,
    Enum,
    Field,
    Float,
    Int,
    Map,
    Nested,
    Str,
    _Slow,
    _type_name,
    reject,
)

__all__ = ["MISSING", "Array", "Bool", "Bytes", "Empty", "Enum", "Field", "Float", "Int", "Map", "Nested", "Payload", "Str",
           "_Slow", "reject"]


class Payload:
    """Base of every declared payload. Instances are immutable and validated."""

    fields: ClassVar[dict[str, Field]] = {}
    # set per class by _compile (proto/compiled.py): the fast paths and whether it is flat
    _flat: ClassVar[bool]
    _fill: ClassVar[Callable[..., Any]]
    _to_wire: ClassVar[Callable[..., Any]]
    doc: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "fields", {}))
        for name, value in list(vars(cls).items()):
            if isinstance(value, Field):
                value.name = name
                fields[name] = value
                delattr(cls, name)
        cls.fields = fields
        cls.doc = (cls.__doc__ or "").strip()
        cls.__init__ = Payload.__init__     # type: ignore[method-assign]  # not a parent's compiled one: it knows other fields
        cls._flat = False                   # known once compiled (_compile)

    def __init__(self, **values: Any):
        cls = type(self)
        if "_fill" not in cls.__dict__:
            _compile(cls)
            if cls.__init__ is not Payload.__init__:
                cls.__init__(self, **values)    # the compiled constructor, from now on
                return
        self._set(values, "$.payload", strict=True)

    def _set(self, values: dict, path: str, strict: bool) -> None:
        if strict:
            for key in values:
                if key not in self.fields:
                    known = ", ".join(self.fields) or "none"
                    raise reject(f"{path}.{key}", f"unknown field (fields: {known})")
        for name, field in self.fields.items():
            fpath = f"{path}.{name}"
            if name in values:
                value = field.validate(values[name], fpath, strict)
            elif field.required:
                raise reject(fpath, "required field missing")
            else:
                value = field.default
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    @classmethod
    def from_wire(cls, obj: Any, path: str = "$.payload", strict: bool = False) -> Self:
        """Validate a decoded map. Unknown keys are ignored unless ``strict`` (a newer
        peer's appended fields); absent fields with defaults take them.

        Valid input takes a validator compiled from the declaration (``_compiled``);
        anything it does not accept goes through the field-by-field path below, which
        finds and names the fault."""
        if not strict and type(obj) is dict:
            fill = cls.__dict__.get("_fill") or _compile(cls)
            self = cls.__new__(cls)
            try:
                fill(self, obj)
                return self
            except _Slow:
                pass
        if obj is None and not cls.fields:
            obj = {}
        if not isinstance(obj, dict):
            raise reject(path, f"expected map, got {_type_name(obj)}")
        for key in obj:
            if type(key) is not str:
                raise reject(path, f"map key {key!r} is not a string")
        self = cls.__new__(cls)
        self._set(obj, path, strict)
        return self

    @classmethod
    def example(cls) -> Payload:
        """A valid instance built from each field's ``sample()``."""
        return cls(**{name: f.sample() for name, f in cls.fields.items()})

    @classmethod
    def structs(cls) -> list[type[Payload]]:
        """The payload types nested in this one (depth first, each once), then this one:
        the order a C header must define them in."""
        out: list[type[Payload]] = []
        for f in cls.fields.values():
            inner = f.item if isinstance(f, Array) else f
            if isinstance(inner, Nested):
                out += [s for s in inner.struct.structs() if s not in out]
        return out + [cls]

    def to_wire(self) -> dict:
        to_wire = type(self).__dict__.get("_to_wire")
        if to_wire is None:
            _compile(type(self))
            to_wire = type(self)._to_wire
        return to_wire(self)

    def to_json(self) -> dict:
        """JSON-safe form: bytes as MAC strings or lists, enums as names."""
        return {name: f.to_json(getattr(self, name)) for name, f in self.fields.items()}

    def replace(self, **changes: Any) -> Payload:
        return type(self)(**(self.to_wire() | changes))

    def __eq__(self, other):
        return type(other) is type(self) and self.to_wire() == other.to_wire()

    def __hash__(self):
        return hash((type(self), repr(self)))

    def __repr__(self):
        body = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.fields)
        return f"{type(self).__name__}({body})"


def _compile(cls: type[Payload]):
    """Compile a payload type's validators (proto/compiled.py)."""
    return compile_payload(cls)


class Empty(Payload):
    """No payload."""
