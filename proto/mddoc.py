"""The Markdown reference of a catalog (``auxipc proto doc``, committed as
docs/events.md; a test checks the file equals what this renders). Pure string building."""

from __future__ import annotations

import json

from .cheader import _base
from .events import Catalog, Direction, EventSpec
from .names import version_str as _v
from .schema import Array, Field, Map, Nested, Payload
from .schema import Enum as EnumField

INTRO = """\
Event numbers are ABI: parent→child events use 1..63, child→parent 64..127,
user-defined events (schema modules, `--schema` or the `auxipc.schemas` entry
points) 0x1000 and up. Each event selects one payload struct (the union) and,
when sync, one reply struct.

*delivery*: sync is a request answered exactly once (0, a negative errno, or
the reply); async is published and not answered. *state* marks the state-like
async events: they carry state rather than news, so their publisher keeps the
last value sent on each device and publishes it again on RESYNC and to a
driver that has just bound. *context*: where the receiving handler runs as the
kernel would call it (atomic: it must not sleep; may-sleep: process context).
*rtnl*: the kernel would hold rtnl around the handler; the broker holds it for
the call's task while the handler runs (REQUEST `rtnl: true`).

On the wire ([protocol.md](protocol.md)): a payload is a msgpack map of field name to
value, packed on its own into the message's `p` (bin). Integers are msgpack
ints within the field's rule; an enum field carries its member's integer
value; a byte field (`u8[N]`) is a msgpack bin, so a MAC address is a 6-byte
bin; an array is a msgpack array; a struct is a nested map. The JSON forms in
the examples below (enum names, MAC strings) are the command line's; senders
MUST NOT put them on the wire. A sender MUST send the required fields; a field
with a default MAY be left out. An event without payload fields has the empty
map. A receiver skips an event whose code it does not know (-EOPNOTSUPP for a
sync call) and never runs a sync event's handler for an event that came
published.

Evolution: fields are only appended, each later one with a default and the
schema version it appeared in (*since*). A receiver fills absent fields with
their defaults and ignores fields it does not know, so peers one minor version
apart interoperate; an event the older side does not know is -EOPNOTSUPP.
Peers of different major versions are never bound (BIND_REFUSED).
"""


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sentence(text: str) -> str:
    text = _cell(text.strip())
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _ctype(field: Field) -> str:
    if isinstance(field, Map):
        return "map"
    ctype, dims, _ = _base(field)
    inner = field.item if isinstance(field, Array) else field
    if isinstance(inner, EnumField):
        ctype += f" ([{inner.enum.__name__}](#{inner.enum.__name__.lower()}))"
    elif isinstance(inner, Nested):
        ctype = f"struct [{inner.struct.__name__}](#{inner.struct.__name__.lower()})"
    return ctype + "".join(f"[{d}]" for d in dims)


def default_value(field: Field) -> tuple[str, int] | None:
    """A field's default as JSON, and how many times it repeats (a long array of one
    value is written once, with its count); None for a required field."""
    if field.required:
        return None
    value = field.to_json(field.default)
    if isinstance(value, list) and len(value) > 8 and len(set(map(json.dumps, value))) == 1:
        return json.dumps(value[0]), len(value)
    return json.dumps(value), 1


def _default(field: Field) -> str:
    got = default_value(field)
    if got is None:
        return "required"
    text, count = got
    return f"`{text}` × {count}" if count > 1 else f"`{text}`"


def _link(cls: type[Payload]) -> str:
    return f"[{cls.__name__}](#{cls.__name__.lower()})" if cls.fields else "—"


def _delivery(spec: EventSpec) -> str:
    return f"{spec.delivery.value}, state" if spec.state else spec.delivery.value


def _events_table(catalog: Catalog) -> list[str]:
    rows = ["| code | event | direction | delivery | context | rtnl | since | payload | reply |",
            "|---:|---|---|---|---|---|---|---|---|"]
    for s in catalog:
        code = f"{int(s.code):#x}" if s.code >= 0x1000 else str(int(s.code))
        rows.append(f"| {code} | [{s.name}](#{s.name.lower()}) | {s.direction.value} | {_delivery(s)} | "
                    f"{s.context.value} | {'yes' if s.rtnl else ''} | {_v(s.since)} | {_link(s.payload)} | "
                    f"{_link(s.reply) if s.sync else ''} |")
    return rows


def _event(spec: EventSpec) -> list[str]:
    code = f"{int(spec.code):#x}" if spec.code >= 0x1000 else str(int(spec.code))
    out = [f"### {spec.name}", "",
           f"Code {code}, {spec.direction.value}, {_delivery(spec)}, handler context {spec.context.value}"
           f"{', under rtnl' if spec.rtnl else ''}, since {_v(spec.since)}. {_sentence(spec.doc)}".rstrip(), ""]
    parts = [("payload", spec.payload)] + ([("reply", spec.reply)] if spec.sync else [])
    for what, cls in parts:
        if not cls.fields:
            out += ["No payload." if what == "payload" else "No reply payload: the answer is 0 or a negative errno.", ""]
            continue
        example = json.dumps(cls.example().to_json(), separators=(", ", ": "))
        out += [f"{what.capitalize()} {_link(cls)}, for example:", "", "```json", example, "```", ""]
    return out


def _struct(cls: type[Payload]) -> list[str]:
    out = [f"### {cls.__name__}", ""]
    if cls.doc:
        out += [cls.doc, ""]
    out += ["| field | C type | rule | default | since | notes |", "|---|---|---|---|---|---|"]
    for f in cls.fields.values():
        out.append(f"| `{f.name}` | {_cell(_ctype(f))} | {_cell(f.rule())} | {_default(f)} | {_v(f.since)} | "
                   f"{_cell(f.doc)} |")
    return out + [""]


def render(catalog: Catalog) -> str:
    out = [f"# Event catalog, schema {catalog.version_str}", "",
           "<!-- Generated by `auxipc proto doc` from the declarations in proto/: do not edit. -->", "",
           INTRO, "## Events", "", *_events_table(catalog), ""]
    for title, direction in (("Parent → child", Direction.TO_CHILD), ("Child → parent", Direction.TO_PARENT),
                             ("Both directions", Direction.BOTH)):
        specs = [s for s in catalog if s.direction is direction]
        if specs:
            out += [f"## {title}", ""]
            for s in specs:
                out += _event(s)
    out += ["## Structs", ""]
    for cls in catalog.structs():
        out += _struct(cls)
    out += ["## Enums", ""]
    for enum in catalog.enums():
        doc = (enum.__doc__ or "").strip()
        out += [f"### {enum.__name__}", "", *([doc, ""] if doc else []),
                "| name | value |", "|---|---:|", *[f"| {m.name} | {m.value} |" for m in enum], ""]
    return "\n".join(out).rstrip("\n") + "\n"
