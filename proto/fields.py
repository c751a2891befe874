"""The field kinds a payload is declared with (``Int``, ``Str``, ``Nested``, ...):
each checks a value, names the path and the rule when it rejects one, and gives
its wire, JSON and documentation forms. ``proto.schema`` builds payloads on them;
``proto.compiled`` compiles their checks.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

from .errno import AuxError, Errno

if TYPE_CHECKING:
    from .schema import Payload

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

    if TYPE_CHECKING:
        # A declared field is removed from its class (Payload.__init_subclass__); on an
        # instance the name holds the value. Told to the type checker this way.
        def __get__(self, obj: Any, owner: Any = None) -> Any: ...

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

    def __init__(self, min: int = -(2**31), max: int = 2**31 - 1, *, choices: tuple[int, ...] = (),
                 nullable: bool = False, **kw):
        super().__init__(**kw)
        self.min, self.max, self.choices, self.nullable = min, max, tuple(choices), nullable

    def check(self, value, path):
        if value is None and self.nullable:
            return None
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
            rule = "one of " + ", ".join(hex(c) if c > 255 else str(c) for c in self.choices)
        else:
            rule = f"int {self.min}..{self.max}"
        return rule + " or nil" if self.nullable else rule

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


class _Slow(Exception):
    """The compiled validator declines: the field-by-field path decides and explains."""


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_json"):        # a Payload (not imported here: it is built on these fields)
        return value.to_json()
    if isinstance(value, IntEnum):
        return value.name
    if isinstance(value, bytes):
        return ":".join(f"{b:02x}" for b in value) if len(value) == 6 else list(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


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
