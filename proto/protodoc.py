"""Generated parts of docs/protocol.md: the message headers and the errno table.

Pure string building from the declarations in envelope.py and errno.py; a test
checks that docs/protocol.md contains exactly what this renders.
"""

from __future__ import annotations

from . import envelope as E
from .control import CTL_ARGS, BoundDevice, FaultSpec, Restore
from .errno import ERRNO_TABLE
from .replies import REPLIES


def _fields(cls) -> str:
    parts = []
    for name, f in cls.fields.items():
        opt = "" if f.required else f" = {f.to_wire(f.default)!r}"
        parts.append(f"`{name}`: {f.rule()}{opt}")
    return "; ".join(parts) or "—"


def _doc(cls) -> str:
    return " ".join((cls.__doc__ or "").split())


def message_table() -> str:
    rows = ["| t | message | header fields (besides `t`) | purpose |", "|---:|---|---|---|"]
    for code, cls in sorted(E.header_types().items()):
        rows.append(f"| {code} | {E.Msg(code).name} | {_fields(cls)} | {_doc(cls)} |")
    rows += ["", "Maps nested in headers, declared like the headers (a bad value is refused with EINVAL "
             "naming its path, e.g. `$.header.restore.bound[0].refs`):", "",
             "| struct | fields | purpose |", "|---|---|---|"]
    rows += [f"| {cls.__name__} | {_fields(cls)} | {_doc(cls)} |" for cls in (BoundDevice, Restore, FaultSpec)]
    rows += ["", "CTL `args`, per `op` (an op not listed is refused with EOPNOTSUPP):", "",
             "| op | args | purpose |", "|---|---|---|"]
    rows += [f"| {op} | {_fields(cls)} | {_doc(cls)} |" for op, cls in CTL_ARGS.items()]
    rows += ["", "The broker's answers: RESULT `d`, per request (a request not listed is answered "
             "with `d = {}`; an error carries only `e` and `m`):", "",
             "| request | `d` fields | purpose |", "|---|---|---|"]
    rows += [f"| {msg.name} | {_fields(cls)} | {_doc(cls)} |" for msg, cls in REPLIES.items()]
    rows += ["", f"Every value is bounded while it is decoded: a message of at most {E.MAX_MSG} bytes, "
             f"strings and bins within it, arrays and maps of at most {E.MAX_ITEMS} items, and "
             f"nesting of at most {E.MAX_DEPTH} levels (deeper: EPROTO)."]
    return "\n".join(rows)


def errno_table() -> str:
    rows = ["| name | wire value | strerror | used for |", "|---|---:|---|---|"]
    for errno, (text, use) in sorted(ERRNO_TABLE.items(), key=lambda kv: kv[0].value):
        rows.append(f"| {errno.name} | -{errno.value} | {text} | {use} |")
    return "\n".join(rows)


def render(template: str) -> str:
    """Replace the ``<!-- generated:NAME -->...<!-- end -->`` blocks of ``template``."""
    out = template
    for name, fn in (("messages", message_table), ("errnos", errno_table)):
        start, end = f"<!-- generated:{name} -->", "<!-- end -->"
        i = out.index(start) + len(start)
        j = out.index(end, i)
        out = out[:i] + "\n" + fn() + "\n" + out[j:]
    return out

