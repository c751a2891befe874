"""User-defined events: build a catalog from the built-ins plus schema modules.

A schema module (found through the ``auxipc.schemas`` entry-point group or
``--schema MODULE``; the loading is the CLI's, this is pure) declares::

    SCHEMA_VERSION = (1, 1)              # optional: the version of the combined catalog
    EVENTS = (
        EventSpec(0x1000, "MY_EVENT", Direction.TO_CHILD, Delivery.SYNC, MyPayload, MyReply),
    )

and gets the built-ins' treatment: validation, discovery, ``auxipc events``,
the C header and the Markdown reference.

Rules checked here, each refusal naming the module and the event or field:
- codes are ``USER_EVENT_BASE`` (0x1000) .. 2**31-1, names ``[A-Z][A-Z0-9_]*``,
  neither declared twice (EEXIST);
- payload and reply are Payload subclasses; a struct or enum name means one
  type only (the C header and the docs are keyed by it);
- nothing appeared after the catalog's version (``since`` <= version), and the
  evolution rule: a field that appeared after its event did has a default (so an
  older peer's message still decodes), and fields are in ``since`` order (appended).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .errno import AuxError, Errno
from .events import BUILTIN_EVENTS, SCHEMA_VERSION, USER_EVENT_BASE, Catalog, Delivery, Direction, EventSpec, _walk
from .names import version_str as _v
from .schema import Enum as EnumField
from .schema import Nested, Payload

NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
MAX_CODE = 2**31 - 1


def _version(obj: Any, where: str) -> tuple[int, int]:
    if (not isinstance(obj, (tuple, list)) or len(obj) != 2
            or not all(type(x) is int and 0 <= x <= 65535 for x in obj)):
        raise AuxError(Errno.EINVAL, f"{where}: SCHEMA_VERSION must be (major, minor), got {obj!r}")
    return (obj[0], obj[1])


def check_spec(spec: EventSpec, version: tuple[int, int], where: str, user: bool = True) -> None:
    """Refuse an EventSpec that breaks a rule above (EINVAL)."""
    if not isinstance(spec, EventSpec):
        raise AuxError(Errno.EINVAL, f"{where}: EVENTS holds {type(spec).__name__}, not EventSpec")
    what = f"{where}: event {spec.name}"
    if not isinstance(spec.name, str) or not NAME.match(spec.name):
        raise AuxError(Errno.EINVAL, f"{where}: event name {spec.name!r} is not [A-Z][A-Z0-9_]*")
    if not isinstance(spec.code, int) or isinstance(spec.code, bool):
        raise AuxError(Errno.EINVAL, f"{what}: code {spec.code!r} is not an int")
    if user and not USER_EVENT_BASE <= spec.code <= MAX_CODE:
        raise AuxError(Errno.EINVAL, f"{what}: code {int(spec.code):#x} is outside the user range "
                       f"{USER_EVENT_BASE:#x}..{MAX_CODE:#x}")
    if not isinstance(spec.direction, Direction) or not isinstance(spec.delivery, Delivery):
        raise AuxError(Errno.EINVAL, f"{what}: direction and delivery must be Direction and Delivery members")
    for role, cls in (("payload", spec.payload), ("reply", spec.reply)):
        if not (isinstance(cls, type) and issubclass(cls, Payload)):
            raise AuxError(Errno.EINVAL, f"{what}: {role} {cls!r} is not a Payload subclass")
    since = _version(spec.since, what)
    if since > version:
        raise AuxError(Errno.EINVAL, f"{what} appeared in {_v(since)}, after the catalog's {_v(version)}")
    for cls in {spec.payload, spec.reply}:
        _check_evolution(cls, since, version, f"{what}: {cls.__name__}")


def _check_evolution(cls: type[Payload], since, version, where: str) -> None:
    last = (0, 0)
    for f in cls.fields.values():
        fs = _version(f.since, f"{where}.{f.name}")
        if fs > version:
            raise AuxError(Errno.EINVAL, f"{where}.{f.name} appeared in {_v(fs)}, after the catalog's {_v(version)}")
        if fs < last:
            raise AuxError(Errno.EINVAL, f"{where}.{f.name} (since {_v(fs)}) follows a field of {_v(last)}: "
                           "fields are only appended")
        if fs > since and f.required:
            raise AuxError(Errno.EINVAL, f"{where}.{f.name} appeared in {_v(fs)}, after the event ({_v(since)}), "
                           "so it needs a default")
        last = fs
        if isinstance(f, Nested):
            _check_evolution(f.struct, max(since, fs), version, f"{where}.{f.name}")


def _check_names(catalog: Catalog) -> None:
    """One type per struct name and per enum name (the C header and docs use the name)."""
    structs: dict[str, type] = {}
    enums: dict[str, type] = {}
    for spec in catalog:
        for cls in (spec.payload, spec.reply):
            for s in cls.structs():
                other = structs.setdefault(s.__name__, s)
                if other is not s:
                    raise AuxError(Errno.EEXIST, f"event {spec.name}: struct name {s.__name__} already names "
                                   f"{other.__module__}.{other.__qualname__}")
                for f in _walk(s):
                    if isinstance(f, EnumField):
                        e = enums.setdefault(f.enum.__name__, f.enum)
                        if e is not f.enum:
                            raise AuxError(Errno.EEXIST, f"event {spec.name}: enum name {f.enum.__name__} "
                                           f"already names {e.__module__}.{e.__qualname__}")


def build_catalog(schemas: Iterable[Any] = (), base: Iterable[EventSpec] = BUILTIN_EVENTS,
                  version: tuple[int, int] = SCHEMA_VERSION) -> Catalog:
    """The built-in catalog plus each schema module's ``EVENTS``.

    ``schemas`` are module-like objects (``__name__``, ``EVENTS``, optional
    ``SCHEMA_VERSION``). The catalog's version is the highest of ``version`` and
    the modules' ``SCHEMA_VERSION``."""
    schemas = list(schemas)
    for mod in schemas:
        declared = getattr(mod, "SCHEMA_VERSION", None)
        if declared is not None:
            version = max(version, _version(declared, f"schema {getattr(mod, '__name__', mod)!r}"))
    catalog = Catalog((), version)
    for spec in base:
        check_spec(spec, version, "built-in", user=False)
        catalog.add(spec)
    for mod in schemas:
        where = f"schema {getattr(mod, '__name__', mod)!r}"
        events = getattr(mod, "EVENTS", None)
        if not isinstance(events, (tuple, list)):
            raise AuxError(Errno.EINVAL, f"{where}: EVENTS must be a tuple of EventSpec, got "
                           f"{type(events).__name__ if events is not None else 'nothing'}")
        for spec in events:
            check_spec(spec, version, where)
            try:
                catalog.add(spec)
            except AuxError as exc:
                raise AuxError(exc.errno, f"{where}: {exc.message}") from None
    _check_names(catalog)
    return catalog
