"""Loading user-defined event schemas: the I/O half of proto/extend.py.

A schema module (see proto/extend.py for what it declares) is found through the
``auxipc.schemas`` entry-point group of installed packages, or named with
``--schema MODULE`` (repeatable; also ``$AUXIPC_SCHEMA``, whitespace-separated)
on ``broker``, ``parent``, ``child``, ``send``, ``events`` and ``proto``. Every
process of one bus should load the same modules, except on purpose: peers of
different minor versions interoperate, different majors never bind.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from proto.errno import AuxError, Errno
from proto.events import CATALOG, Catalog
from proto.extend import build_catalog

ENTRY_POINT_GROUP = "auxipc.schemas"


def load_modules(names=(), use_entry_points: bool = True) -> list:
    """The schema modules: installed entry points first, then ``names`` in order."""
    mods = []
    if use_entry_points:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            try:
                mods.append(ep.load())
            except Exception as exc:   # a broken plugin is named, not a traceback
                raise AuxError(Errno.ENOENT, f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}): "
                               f"{type(exc).__name__}: {exc}") from None
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            raise AuxError(Errno.ENOENT, f"cannot load schema module {name!r}: {exc}") from None
        if mod not in mods:
            mods.append(mod)
    return mods


def load_catalog(names=(), use_entry_points: bool = True) -> Catalog:
    """The built-in catalog plus every schema module (the shared CATALOG when there is none)."""
    mods = load_modules(names, use_entry_points)
    return build_catalog(mods) if mods else CATALOG
