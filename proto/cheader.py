"""The C header of a catalog (``auxipc proto c-header``): pure string building.

Kernel style: the event enum, per-event flag bits (direction, sync, atomic
context, rtnl), one struct per payload, the payload and reply unions. Types are
``u8 .. s64`` and ``bool`` from <linux/types.h> in the kernel, and a typedef block
over <stdint.h>/<stdbool.h> elsewhere, so the header compiles both ways
(``gcc -std=gnu11 -Wall -Werror``; a test checks it).

Field mapping: Int -> the smallest uN/sN holding its range; Bool -> bool; Enum
-> the smallest integer type holding its values (the enum named in a comment);
fixed-size Bytes and Array -> C arrays; bounded Bytes/Array -> ``<name>_len`` /
``<name>_count`` followed by the array at its maximum; Str -> ``char[max + 1]``;
Nested -> the nested struct; Map -> a comment (not representable).

With ``ops`` (``--ops``), the handler prototypes of the contract follow: an
ops struct per receiving side, one member per event it receives (a sync one
returns 0 or a negative errno and fills the reply, an async one returns
nothing), each commented with its context and rtnl, and the send entry points.
"""

from __future__ import annotations

import re

from .events import Catalog, EventSpec
from .schema import Array, Bool, Bytes, Field, Int, Map, Nested, Payload, Str
from .schema import Enum as EnumField

C_KEYWORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
              "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
              "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
              "union", "unsigned", "void", "volatile", "while", "bool", "true", "false"}

FLAGS = (
    ("TO_CHILD", "parent -> child"),
    ("TO_PARENT", "child -> parent"),
    ("SYNC", "request/reply; else async (fire and forget)"),
    ("ATOMIC", "the handler runs in atomic context: it must not sleep"),
    ("RTNL", "the kernel would hold rtnl around the handler"),
)


def snake(name: str) -> str:
    """``MtuChangeBefore`` -> ``mtu_change_before``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def ident(name: str) -> str:
    return name + "_" if name in C_KEYWORDS else name


def struct_name(cls: type[Payload]) -> str:
    return f"struct auxipc_{snake(cls.__name__)}"


def _int_type(lo: int, hi: int) -> str:
    if lo >= 0:
        return next(f"u{b}" for b in (8, 16, 32, 64) if hi < 2**b)
    return next((f"s{b}" for b in (8, 16, 32) if -(2 ** (b - 1)) <= lo and hi < 2 ** (b - 1)), "s64")


def _full_range(ctype: str) -> tuple[int, int]:
    bits = int(ctype[1:])
    return (0, 2**bits - 1) if ctype[0] == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _count_type(n: int) -> str:
    return _int_type(0, n)


def _base(field: Field) -> tuple[str, list[int], str]:
    """(C type, array dims, comment) of one field or array item."""
    match field:
        case Bool():
            return "bool", [], ""
        case Int():
            lo, hi = (min(field.choices), max(field.choices)) if field.choices else (field.min, field.max)
            ctype = _int_type(max(lo, field.min), min(hi, field.max))
            full = not field.choices and (field.min, field.max) == _full_range(ctype)
            return ctype, [], "" if full else field.rule()
        case EnumField():
            values = [m.value for m in field.enum]
            return _int_type(min(values), max(values)), [], f"enum auxipc_{snake(field.enum.__name__)}"
        case Bytes():
            return "u8", [field.size if field.size is not None else field.max_len], ""
        case Str():
            return "char", [field.max_len + 1], "NUL-terminated"
        case Nested():
            return struct_name(field.struct), [], ""
        case Array():
            ctype, dims, note = _base(field.item)
            n = field.length if field.length is not None else field.max_len
            extra = f"summing to {field.total}" if field.total is not None else ""
            return ctype, [n, *dims], "; ".join(x for x in (note, extra) if x)
    raise TypeError(f"no C mapping for {type(field).__name__}")


def _member(field: Field, event_since) -> list[str]:
    name = ident(field.name)
    if isinstance(field, Map):
        return [f"\t/* {name}: a map, not representable in C (JSON and msgpack only) */"]
    ctype, dims, note = _base(field)
    notes = [n for n in (field.doc, note) if n]
    if tuple(field.since) > tuple(event_since):
        notes.append(f"since {field.since[0]}.{field.since[1]}")
    lines = []
    variable = (isinstance(field, Bytes) and field.size is None) or (isinstance(field, Array) and field.length is None)
    if variable:
        suffix = "_len" if isinstance(field, Bytes) else "_count"
        lines.append(f"\t{_count_type(dims[0])} {name}{suffix};")
    comment = f"\t/* {'; '.join(notes)} */" if notes else ""
    lines.append(f"\t{ctype} {name}{''.join(f'[{d}]' for d in dims)};{comment}")
    return lines


def _comment_block(text: list[str]) -> list[str]:
    return ["/*", *[f" * {t}".rstrip() for t in text], " */"]


def _flags(spec: EventSpec) -> str:
    bits = []
    if spec.direction.allows("parent"):
        bits.append("AUXIPC_EVF_TO_CHILD")
    if spec.direction.allows("child"):
        bits.append("AUXIPC_EVF_TO_PARENT")
    if spec.sync:
        bits.append("AUXIPC_EVF_SYNC")
    if spec.context.name == "ATOMIC":
        bits.append("AUXIPC_EVF_ATOMIC")
    if spec.rtnl:
        bits.append("AUXIPC_EVF_RTNL")
    return " | ".join(bits)


def _op(spec: EventSpec) -> list[str]:
    notes = ["sync" if spec.sync else "async"]
    if spec.context.name == "ATOMIC":
        notes.append("atomic: must not sleep")
    if spec.rtnl:
        notes.append("called with rtnl held")
    args = ["struct auxiliary_device *adev"]
    if spec.payload.fields:
        args.append(f"const {struct_name(spec.payload)} *p")
    if spec.sync and spec.reply.fields:
        args.append(f"{struct_name(spec.reply)} *reply")
    ret = "int " if spec.sync else "void "
    return [f"\t/* {spec.name}: {', '.join(notes)} */",
            f"\t{ret}(*{ident(spec.name.lower())})({', '.join(args)});"]


def _ops(catalog: Catalog) -> list[str]:
    out = _comment_block([
        "Handler prototypes: one op per event the side receives, the exported-ops",
        "shape of the same contract. A sync op returns 0 or a negative errno and fills",
        "*reply when the event has one; an async op returns nothing and is never answered.",
        "An unset op: a sync event is answered -EOPNOTSUPP, an async one dropped."])
    out += ["struct auxiliary_device;", ""]
    for side, sender, who in (("child", "parent", "the auxiliary driver implements these"),
                              ("parent", "child", "the PCI owner implements these")):
        specs = [s for s in catalog if s.direction.allows(sender)]
        out += [f"/* {sender} -> {side}: {who} */", f"struct auxipc_{side}_ops {{"]
        for spec in specs:
            out += _op(spec)
        if not specs:
            out.append("\tu8 none;")
        out += ["};", ""]
    out += _comment_block([
        "The sending side: one entry point per delivery. auxipc_call() waits for the",
        "answer (0, a negative errno, or 0 and *reply filled) and may sleep: never from",
        "atomic context. auxipc_post() returns at once; it fails only if the event is",
        "unknown (-EOPNOTSUPP) or the payload invalid (-EINVAL)."])
    out += ["int auxipc_call(struct auxiliary_device *adev, u32 event, const union auxipc_payload *p,",
            "\t\tunion auxipc_reply *reply);",
            "int auxipc_post(struct auxiliary_device *adev, u32 event, const union auxipc_payload *p);", ""]
    return out


def render(catalog: Catalog, ops: bool = False) -> str:
    major, minor = catalog.version
    out = ["/* SPDX-License-Identifier: MIT */",
           *_comment_block([f"auxipc event contract, schema {catalog.version_str}.", "",
                            "Generated by `auxipc proto c-header` from the catalog declared in proto/events.py",
                            "(plus any schema modules loaded): do not edit.",
                            "Event numbers and struct layouts are ABI: fields are only appended."]),
           "#ifndef _AUXIPC_EVENTS_H", "#define _AUXIPC_EVENTS_H", "",
           "#ifdef __KERNEL__", "#include <linux/types.h>", "#else", "#include <stdbool.h>", "#include <stdint.h>",
           "typedef uint8_t u8;", "typedef uint16_t u16;", "typedef uint32_t u32;", "typedef uint64_t u64;",
           "typedef int8_t s8;", "typedef int16_t s16;", "typedef int32_t s32;", "typedef int64_t s64;",
           "#endif", "",
           "#define AUXIPC_SCHEMA(major, minor)\t(((major) << 16) | (minor))",
           f"#define AUXIPC_SCHEMA_MAJOR\t{major}", f"#define AUXIPC_SCHEMA_MINOR\t{minor}",
           "#define AUXIPC_SCHEMA_VERSION\tAUXIPC_SCHEMA(AUXIPC_SCHEMA_MAJOR, AUXIPC_SCHEMA_MINOR)", "",
           "enum auxipc_event {"]
    out += [f"\tAUXIPC_EV_{spec.name} = {int(spec.code):#x}," if spec.code >= 0x1000
            else f"\tAUXIPC_EV_{spec.name} = {int(spec.code)}," for spec in catalog]
    out += ["};", ""]
    out += [f"#define AUXIPC_EVF_{name}\t(1U << {i})\t/* {text} */" for i, (name, text) in enumerate(FLAGS)]
    out += ["", "static inline u32 auxipc_event_flags(u32 event)", "{", "\tswitch (event) {"]
    for spec in catalog:
        out += [f"\tcase AUXIPC_EV_{spec.name}:", f"\t\treturn {_flags(spec)};"]
    out += ["\tdefault:", "\t\treturn 0;\t/* unknown: -EOPNOTSUPP */", "\t}", "}", ""]
    out += ["/* The schema version each event appeared in. */",
            "static inline u32 auxipc_event_since(u32 event)", "{", "\tswitch (event) {"]
    for spec in catalog:
        out += [f"\tcase AUXIPC_EV_{spec.name}:", f"\t\treturn AUXIPC_SCHEMA({spec.since[0]}, {spec.since[1]});"]
    out += ["\tdefault:", "\t\treturn 0;", "\t}", "}", ""]

    for enum in catalog.enums():
        prefix = f"AUXIPC_{snake(enum.__name__).upper()}"
        out += [f"enum auxipc_{snake(enum.__name__)} {{",
                *[f"\t{prefix}_{m.name} = {m.value}," for m in enum], "};", ""]

    since_of: dict[type, tuple[int, int]] = {}
    for spec in catalog:
        for cls in (spec.payload, spec.reply):
            for s in cls.structs():
                since_of.setdefault(s, spec.since)
    for cls in catalog.structs():
        users = [s.name for s in catalog if s.payload is cls] + [f"{s.name} reply" for s in catalog
                                                                 if s.sync and s.reply is cls]
        head = [cls.doc or cls.__name__] + ([f"Used by: {', '.join(users)}."] if users else [])
        out += _comment_block(head)
        out += [f"{struct_name(cls)} {{"]
        for f in cls.fields.values():
            out += _member(f, since_of.get(cls, (0, 0)))
        out += ["};", ""]

    for union, attr, what in (("payload", "payload", "payload"), ("reply", "reply", "reply")):
        members = [s for s in catalog if getattr(s, attr).fields and (attr == "payload" or s.sync)]
        empty = [s.name for s in catalog if not getattr(s, attr).fields and (attr == "payload" or s.sync)]
        out += _comment_block([f"The {what} selected by the event: member <event name in lower case>.",
                               *([f"No {what}: {', '.join(empty)}."] if empty else [])])
        out += [f"union auxipc_{union} {{"]
        out += [f"\t{struct_name(getattr(s, attr))} {s.name.lower()};" for s in members] or ["\tu8 none;"]
        out += ["};", ""]
    if ops:
        out += _ops(catalog)
    out += ["#endif /* _AUXIPC_EVENTS_H */", ""]
    return "\n".join(out)
