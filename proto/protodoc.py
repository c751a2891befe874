"""Generated parts of docs/protocol.md: the message headers and the errno table.

Pure string building from the declarations in envelope.py and errno.py; a test
checks that docs/protocol.md contains exactly what this renders.
"""

from __future__ import annotations

from . import envelope as E
from .errno import ERRNO_TABLE


def _fields(cls) -> str:
    parts = []
    for name, f in cls.fields.items():
        opt = "" if f.required else f" = {f.to_wire(f.default)!r}"
        parts.append(f"`{name}`: {f.rule()}{opt}")
    return "; ".join(parts) or "—"


def message_table() -> str:
    rows = ["| t | message | header fields (besides `t`) | purpose |", "|---:|---|---|---|"]
    for code, cls in sorted(E.header_types().items()):
        doc = " ".join((cls.__doc__ or "").split())
        rows.append(f"| {code} | {E.Msg(code).name} | {_fields(cls)} | {doc} |")
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

