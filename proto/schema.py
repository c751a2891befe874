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

from enum import IntEnum
from typing import Any, ClassVar

from .errno import AuxError, Errno

MISSING: Any = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    return {bool: "bool", int: "int", str: "str", bytes: "bytes", float: "float",
            list: "array", tuple: "array", dict: "map"}.get(type(value), type(value).__name__)


def reject(path: str, rule: str) -> AuxError:
    return AuxError(Errno.EINVAL, f"{path}: {rule}")


class Field:
    """One declared field. ``check`` returns the normalised value or raises EINVAL."""

    kind = "field"

    def __init__(self, *, default: Any = MISSING, since: tuple[int, int] = (1, 0), doc: str = "",
                 example: Any = MISSING):
        self.default = default
        self.since = tuple(since)
        self.doc = doc
        self.example = example
        self.name = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def validate(self, value: Any, path: str, strict: bool = False) -> Any:
        """``check``, passing ``strict`` (refuse unknown keys) down to nested structs."""
        return self.check(value, path)

    def sample(self) -> Any:
        """A valid value derived from the declaration: the example, the default, or
        the simplest value the rule allows (tests and docs use it)."""
        if self.example is not MISSING:
            return self.example
        if not self.required:
            return self.default
        return self._simplest()

    def _simplest(self) -> Any:
        raise NotImplementedError

    def to_wire(self, value: Any) -> Any:
        return value

    def to_json(self, value: Any) -> Any:
        return _jsonable(value)

    def describe(self) -> dict:
        d = {"name": self.name, "type": self.kind, "since": list(self.since), "doc": self.doc}
        if not self.required:
            d["default"] = self.to_json(self.default)
        return d

    def rule(self) -> str:
        """Human-readable constraint for the docs."""
        return self.kind


class Int(Field):
    kind = "int"

    def __init__(self, min: int = -(2**31), max: int = 2**31 - 1, *, choices: tuple[int, ...] = (), **kw):
        super().__init__(**kw)
        self.min, self.max, self.choices = min, max, tuple(choices)

    def check(self, value, path):
        if type(value) is not int and not isinstance(value, IntEnum):
            raise reject(path, f"expected int, got {_type_name(value)}")
        value = int(value)
        if self.choices and value not in self.choices:
            allowed = ", ".join(hex(c) if c > 255 else str(c) for c in self.choices)
            raise reject(path, f"{value:#x} is not one of {allowed}" if value > 255 else f"{value} is not one of {allowed}")
        if not self.min <= value <= self.max:
            raise reject(path, f"{value} out of range {self.min}..{self.max}")
        return value

    @property
    def ctype(self) -> str:
        if self.min >= 0:
            for bits in (8, 16, 32, 64):
                if self.max < 2**bits:
                    return f"u{bits}"
        for bits in (8, 16, 32, 64):
            if -(2 ** (bits - 1)) <= self.min and self.max < 2 ** (bits - 1):
                return f"s{bits}"
        return "s64"

    def rule(self):
        if self.choices:
            return "one of " + ", ".join(hex(c) if c > 255 else str(c) for c in self.choices)
        return f"int {self.min}..{self.max}"

    def _simplest(self):
        if self.choices:
            return self.choices[0]
        return min(max(0, self.min), self.max)

    def describe(self):
        d = super().describe() | {"min": self.min, "max": self.max}
        if self.choices:
            d["choices"] = list(self.choices)
        return d


class Bool(Field):
    kind = "bool"

    def check(self, value, path):
        if type(value) is not bool:
            raise reject(path, f"expected bool, got {_type_name(value)}")
        return value

    def _simplest(self):
        return False

    ctype = "bool"


class Str(Field):
    """A string of at most ``max_len`` characters; with ``choices``, one of them."""

    kind = "str"

    def __init__(self, max_len: int = 255, *, choices: tuple[str, ...] = (), nullable: bool = False, **kw):
        super().__init__(**kw)
        self.max_len, self.choices, self.nullable = max_len, tuple(choices), nullable

    def check(self, value, path):
        if value is None and self.nullable:
            return None
        if type(value) is not str:
            raise reject(path, f"expected str, got {_type_name(value)}")
        if len(value) > self.max_len:
            raise reject(path, f"length {len(value)} exceeds {self.max_len}")
        if self.choices and value not in self.choices:
            raise reject(path, f"{value!r} is not one of {', '.join(map(repr, self.choices))}")
        return value

    def rule(self):
        rule = ("one of " + ", ".join(repr(c) for c in self.choices) if self.choices
                else f"string, at most {self.max_len} chars")
        return rule + " or nil" if self.nullable else rule

    def _simplest(self):
        return self.choices[0] if self.choices else ""

    def describe(self):
        d = super().describe() | {"max_len": self.max_len}
        if self.choices:
            d["choices"] = list(self.choices)
        return d


class Float(Field):
    """A finite number within ``min``..``max``; an int is taken as its float."""

    kind = "float"

    def __init__(self, min: float = 0.0, max: float = 1.0, **kw):
        super().__init__(**kw)
        self.min, self.max = float(min), float(max)

    def check(self, value, path):
        if type(value) is not float and type(value) is not int:
            raise reject(path, f"expected float, got {_type_name(value)}")
        if not self.min <= value <= self.max:     # false for NaN as well
            raise reject(path, f"{value} out of range {self.min}..{self.max}")
        return float(value)

    def rule(self):
        return f"float {self.min}..{self.max}"

    def _simplest(self):
        return self.min

    def describe(self):
        return super().describe() | {"min": self.min, "max": self.max}

    ctype = "double"


class Bytes(Field):
    """Fixed-size (``size``) or bounded (``max_len``) bytes. JSON callers may give
    a list of ints or, for 6-byte fields, a MAC string ``aa:bb:cc:dd:ee:ff``."""

    kind = "bytes"

    def __init__(self, size: int | None = None, max_len: int = 4096, **kw):
        super().__init__(**kw)
        self.size, self.max_len = size, max_len

    def check(self, value, path):
        if isinstance(value, str) and self.size == 6:
            parts = value.split(":")
            if len(parts) != 6 or not all(len(p) == 2 for p in parts):
                raise reject(path, f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            try:
                value = bytes(int(part, 16) for part in parts)
            except ValueError:
                raise reject(path, f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None
        elif isinstance(value, (list, tuple)) and all(type(b) is int and 0 <= b <= 255 for b in value):
            value = bytes(value)
        if type(value) is not bytes:
            raise reject(path, f"expected bytes, got {_type_name(value)}")
        if self.size is not None and len(value) != self.size:
            raise reject(path, f"expected {self.size} bytes, got {len(value)}")
        if len(value) > self.max_len:
            raise reject(path, f"length {len(value)} exceeds {self.max_len}")
        return value

    def rule(self):
        return f"{self.size} bytes" if self.size is not None else f"bytes, at most {self.max_len}"

    def _simplest(self):
        return bytes(self.size or 0)

    def describe(self):
        return super().describe() | {"size": self.size, "max_len": self.max_len}

    def to_wire(self, value):
        return bytes(value)

    def to_json(self, value):
        """A MAC string for 6-byte fields (what ``check`` accepts back), else a list of ints."""
        return ":".join(f"{b:02x}" for b in value) if self.size == 6 else list(value)


class Enum(Field):
    """An IntEnum field. The wire carries the integer; Python and JSON callers may
    also give the member name."""

    kind = "enum"

    def __init__(self, enum: type[IntEnum], **kw):
        super().__init__(**kw)
        self.enum = enum

    def check(self, value, path):
        if isinstance(value, str):
            try:
                return self.enum[value.upper()]
            except KeyError:
                raise reject(path, f"{value!r} is not one of {', '.join(m.name for m in self.enum)}") from None
        if type(value) is not int and not isinstance(value, self.enum):
            raise reject(path, f"expected {self.enum.__name__} (int or name), got {_type_name(value)}")
        try:
            return self.enum(value)
        except ValueError:
            raise reject(path, f"{value} is not a valid {self.enum.__name__} "
                               f"({', '.join(f'{m.name}={m.value}' for m in self.enum)})") from None

    def to_wire(self, value):
        return int(value)

    def rule(self):
        return " / ".join(m.name for m in self.enum)

    def _simplest(self):
        return next(iter(self.enum))

    def describe(self):
        return super().describe() | {"enum": self.enum.__name__, "members": {m.name: m.value for m in self.enum}}


class Array(Field):
    """A fixed-length (``length``) or bounded (``max_len``) array of one item type.
    ``total`` constrains the sum of integer items (bandwidth shares summing to 100)."""

    kind = "array"

    def __init__(self, item: Field, length: int | None = None, max_len: int = 256,
                 total: int | None = None, **kw):
        super().__init__(**kw)
        self.item, self.length, self.max_len, self.total = item, length, max_len, total

    def check(self, value, path):
        return self.validate(value, path)

    def validate(self, value, path, strict=False):
        if not isinstance(value, (list, tuple)):
            raise reject(path, f"expected array, got {_type_name(value)}")
        if self.length is not None and len(value) != self.length:
            raise reject(path, f"expected {self.length} items, got {len(value)}")
        if len(value) > self.max_len:
            raise reject(path, f"{len(value)} items exceed {self.max_len}")
        items = tuple(self.item.validate(v, f"{path}[{i}]", strict) for i, v in enumerate(value))
        if self.total is not None and sum(items) != self.total:
            raise reject(path, f"items sum to {sum(items)}, must sum to {self.total}")
        return items

    def _simplest(self):
        n = self.length or 0
        if self.total is None or n == 0:
            return tuple(self.item.sample() for _ in range(n))
        share, extra = divmod(self.total, n)          # e.g. 100 over 8: 13, 13, 13, 13, 12, 12, 12, 12
        return tuple(share + (i < extra) for i in range(n))

    def to_wire(self, value):
        return [self.item.to_wire(v) for v in value]

    def to_json(self, value):
        return [self.item.to_json(v) for v in value]

    def rule(self):
        n = f"[{self.length}]" if self.length is not None else f"[..{self.max_len}]"
        s = f" summing to {self.total}" if self.total is not None else ""
        return f"{self.item.rule()} {n}{s}"

    def describe(self):
        return super().describe() | {"item": self.item.describe(), "length": self.length,
                                     "max_len": self.max_len, "total": self.total}


class Nested(Field):
    """A payload struct inside a payload."""

    kind = "struct"

    def __init__(self, struct: type[Payload], **kw):
        super().__init__(**kw)
        self.struct = struct

    def check(self, value, path):
        return self.validate(value, path)

    def validate(self, value, path, strict=False):
        if isinstance(value, self.struct):
            return value
        if value is None and self.default is None:     # an optional struct, left out
            return None
        return self.struct.from_wire(value, path, strict)

    def _simplest(self):
        return self.struct.example()

    def to_wire(self, value):
        return None if value is None else value.to_wire()     # None: an optional struct left out

    def rule(self):
        return f"struct {self.struct.__name__}"

    def describe(self):
        return super().describe() | {"struct": self.struct.__name__}


class Payload:
    """Base of every declared payload. Instances are immutable and validated."""

    fields: ClassVar[dict[str, Field]] = {}
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
        cls.__init__ = Payload.__init__     # not a parent's compiled one: it knows other fields
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
    def from_wire(cls, obj: Any, path: str = "$.payload", strict: bool = False) -> Payload:
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


class _Slow(Exception):
    """The compiled validator declines: the field-by-field path decides and explains."""


def _compile(cls: type[Payload]):
    """Compile a payload type's validators (proto/compiled.py; imported here, once a
    type is first used, because it builds on the field kinds above)."""
    from .compiled import compile_payload
    return compile_payload(cls)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Payload):
        return value.to_json()
    if isinstance(value, IntEnum):
        return value.name
    if isinstance(value, bytes):
        return ":".join(f"{b:02x}" for b in value) if len(value) == 6 else list(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


class Empty(Payload):
    """No payload."""


class Map(Field):
    """A free-form map (control query results, bus notification details): its type
    and size are checked here; its depth is bounded where a message is decoded
    (``envelope.MAX_DEPTH``). Maps whose keys are known are declared as a Nested
    payload instead."""

    kind = "map"

    def __init__(self, max_len: int = 1 << 17, **kw):
        super().__init__(**kw)
        self.max_len = max_len

    def check(self, value, path):
        if not isinstance(value, dict):
            raise reject(path, f"expected map, got {_type_name(value)}")
        if len(value) > self.max_len:
            raise reject(path, f"{len(value)} keys exceed {self.max_len}")
        return value

    def _simplest(self):
        return {}
