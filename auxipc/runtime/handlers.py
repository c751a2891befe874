"""Event handler declaration and result conventions, shared by parents and children.

A handler is a method marked ``@handler(Event.X)`` taking ``(adev, payload)``.
It returns what a kernel handler would: ``None``/``0`` for success, a negative
errno, or (sync events with a reply type) the reply payload or its dict. It may
also raise ``AuxError``. Anything else it raises is reported as -EIO with the
exception named, and the process carries on.
"""

from __future__ import annotations

from typing import Callable

from proto.errno import AuxError, Errno
from proto.events import Catalog, EventSpec, encode_payload
from proto.schema import Payload


def handler(*events):
    """Mark a method as the handler of one or more events (enum members, codes or names)."""
    def mark(fn):
        fn._aux_events = getattr(fn, "_aux_events", ()) + events
        return fn
    return mark


def collect_handlers(obj, catalog: Catalog) -> dict[int, Callable]:
    found: dict[int, Callable] = {}
    for name in dir(type(obj)):
        fn = getattr(type(obj), name, None)
        for ev in getattr(fn, "_aux_events", ()):
            spec = catalog.lookup(ev)
            if spec.code in found:
                raise AuxError(Errno.EEXIST, f"{type(obj).__name__}: two handlers for {spec.name}")
            found[spec.code] = getattr(obj, name)
    return found


def normalize_result(spec: EventSpec | None, result) -> tuple[int, dict | None]:
    """(errno <= 0, reply wire map or None) from what a handler returned."""
    if result is None or result is True:
        return 0, None
    if type(result) is int:
        if result > 0:
            raise AuxError(Errno.EINVAL, f"handler returned {result}; errors are negative errnos")
        return result, None
    if isinstance(result, (Payload, dict)):
        if spec is None or not spec.sync:
            raise AuxError(Errno.EINVAL, "handler returned a reply for an event that has none")
        if type(result) is spec.reply and result._flat:
            return 0, result.__dict__     # a payload of scalars: its __dict__ is its wire map, packed next
        return 0, encode_payload(spec, result, reply=True)
    raise AuxError(Errno.EINVAL, f"handler returned {type(result).__name__}; expected None, an errno or a reply")
