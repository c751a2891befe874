"""One event's contract, for ``auxipc events EVENT``: pure, text or JSON.

Everything a developer needs at the handler they are writing: direction,
delivery, the context the handler runs in, rtnl, the version it appeared in,
and the payload and reply structs field by field with their C type (as
``auxipc proto c-header`` declares it), the rule a value must satisfy, the
default (or "required") and the version each field appeared in. Nested structs
follow their users; enums list their members.
"""

from __future__ import annotations

from .cheader import _base, snake, struct_name
from .events import EventSpec
from .mddoc import default_value
from .names import version_str
from .schema import Array, Empty, Field, Map, Payload
from .schema import Enum as EnumField


def ctype(field: Field) -> str:
    """The field's C declaration type, ``u8[6]``, ``struct auxipc_ets``, ``u8 (enum auxipc_tsa)``."""
    if isinstance(field, Map):
        return "map (not in C)"
    base, dims, _ = _base(field)
    inner = field.item if isinstance(field, Array) else field
    enum = f" (enum auxipc_{snake(inner.enum.__name__)})" if isinstance(inner, EnumField) else ""
    return base + "".join(f"[{d}]" for d in dims) + enum


def _default(field: Field) -> str:
    got = default_value(field)
    if got is None:
        return "required"
    text, count = got
    return f"{text} x {count}" if count > 1 else text


def _structs(cls: type[Payload]) -> list[type[Payload]]:
    """``cls`` first, then the structs nested in it (each once)."""
    nested = [s for s in cls.structs() if s is not cls]
    return [cls, *nested] if cls is not Empty else []


def field_rows(cls: type[Payload]) -> list[dict]:
    return [{"name": f.name, "ctype": ctype(f), "rule": f.rule(), "default": _default(f),
             "since": version_str(f.since), "doc": f.doc} for f in cls.fields.values()]


def _enums(cls: type[Payload]) -> list:
    out: list = []
    for s in _structs(cls):
        for f in s.fields.values():
            inner = f.item if isinstance(f, Array) else f
            if isinstance(inner, EnumField) and inner.enum not in out:
                out.append(inner.enum)
    return out


def describe(spec: EventSpec) -> dict:
    """The machine-readable form (``auxipc events EVENT --json``)."""
    d = spec.describe()
    roles = [("payload", spec.payload)] + ([("reply", spec.reply)] if spec.sync else [])
    d["structs"] = {s.__name__: {"c": struct_name(s), "doc": s.doc, "fields": field_rows(s)}
                    for _, cls in roles for s in _structs(cls)}
    d["enums"] = {e.__name__: {m.name: m.value for m in e} for _, cls in roles for e in _enums(cls)}
    d["sender"] = {"parent->child": "parent", "child->parent": "child"}.get(spec.direction.value, "either")
    return d


def _table(rows: list[list[str]], head: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def render(spec: EventSpec) -> str:
    code = f"{int(spec.code):#x}" if spec.code >= 0x1000 else str(int(spec.code))
    handler = ("atomic context: the handler must not sleep (no sync calls, no blocking)"
               if spec.context.value == "atomic" else "process context: the handler may sleep and make sync calls")
    delivery = ("sync: answered exactly once (0, a negative errno, or the reply)" if spec.sync
                else "async: published, never answered" + ("; the last value is replayed to a late joiner"
                                                           if spec.state else ""))
    out = [f"{spec.name} ({code}), since schema {version_str(spec.since)}",
           f"  {spec.doc}" if spec.doc else "",
           f"  direction  {spec.direction.value}",
           f"  delivery   {delivery}",
           f"  context    {handler}",
           f"  rtnl       {'held around the handler (as the kernel would)' if spec.rtnl else 'not held'}"]
    roles = [("payload", spec.payload)] + ([("reply", spec.reply)] if spec.sync else [])
    for role, cls in roles:
        out.append("")
        if cls is Empty or not cls.fields:
            out.append(f"{role}: none")
            continue
        for i, s in enumerate(_structs(cls)):
            what = role if i == 0 else "  nested"
            out.append(f"{what}: {struct_name(s)} ({s.__name__})" + (f": {s.doc}" if s.doc else ""))
            out += _table([[r["name"], r["ctype"], r["rule"], r["default"], r["since"], r["doc"]]
                           for r in field_rows(s)], ["FIELD", "C TYPE", "RANGE", "DEFAULT", "SINCE", "DOC"])
        for e in _enums(cls):
            out.append(f"  enum {e.__name__}: " + ", ".join(f"{m.name}={m.value}" for m in e))
    return "\n".join(line for i, line in enumerate(out) if line or i > 1) + "\n"
