"""A parent model and a child driver that handle *every* event their side receives,
generically, for the catalog tests (``--model tests.catalog_models:AllParent``,
``--driver tests.catalog_models:AllDriver``).

The catalog is the one the process's CLI builds: the built-ins, the
``auxipc.schemas`` entry points and ``$AUXIPC_SCHEMA`` (the tests pass schema
modules through that variable, so the model and the CLI agree). One handler
method per event is generated with ``@handler(code)``: it appends a JSON line
``{"what": "event", "role", "event", "dev", "payload", "schema"}`` to ``$AXT_LOG``
(tests/models.py ``log``) and answers a sync event with a reply built from what
it decoded: fields the reply shares with the payload are echoed, the others
take their declared sample value.

Environment: ``AXT_MOD`` (parent modname, default ``cat``; devices ``dev.0`` ..
``dev.N-1`` from ``--devices``), ``AXT_DRV`` (driver name, default ``catdrv``),
``AXT_IDS`` (its id_table, default ``cat.dev``).
"""

from __future__ import annotations

import os

from auxipc import AuxDriver, ParentModel, handler
from auxipc.schemas import load_catalog
from proto.events import EventSpec

from .models import log

CATALOG = load_catalog(os.environ.get("AUXIPC_SCHEMA", "").split())


def reply_for(spec: EventSpec, payload):
    """The generic answer: echo the reply fields the payload has, sample the rest."""
    if not spec.sync or not spec.reply.fields:
        return 0
    return spec.reply(**{name: getattr(payload, name) if name in payload.fields else f.sample()
                         for name, f in spec.reply.fields.items()})


def _got(role: str, spec: EventSpec, adev, payload):
    log("event", role=role, event=spec.name, dev=adev.name, payload=payload.to_json(),
        schema=CATALOG.version_str)
    return reply_for(spec, payload)


def _install(cls, role: str) -> None:
    """One ``@handler`` method per event that ``role`` receives."""
    for spec in CATALOG.handled_by(role):
        def on_event(self, adev, payload, _spec=spec):
            return _got(role, _spec, adev, payload)
        on_event.__name__ = f"on_{spec.name.lower()}"
        setattr(cls, on_event.__name__, handler(spec.code)(on_event))


class AllParent(ParentModel):
    modname = "cat"

    def __init__(self, devices: int = 1):
        super().__init__()
        self.modname = os.environ.get("AXT_MOD", "cat")
        self.count = devices

    def probe(self) -> None:
        for i in range(self.count):
            adev = self.device("dev", i, release=lambda adev: log("release", dev=adev.name))
            adev.init()
            try:
                log("added", dev=adev.name, driver=adev.add())
            except Exception:
                adev.uninit()
                raise

    def on_bind(self, adev) -> None:
        log("bind", dev=adev.name, driver=adev.driver, child_schema=".".join(map(str, adev.child_schema)))

    def on_unbind(self, adev, reason: str) -> None:
        log("unbind", dev=adev.name, reason=reason, last_error=adev.last_error)


class AllDriver(AuxDriver):
    name = "catdrv"

    def __init__(self):
        self.name = os.environ.get("AXT_DRV", "catdrv")
        self.id_table = [x for x in os.environ.get("AXT_IDS", "cat.dev").split(",") if x]

    def probe(self, adev) -> int:
        log("probe", dev=adev.name, driver=self.name, parent_schema=".".join(map(str, adev.parent_schema)))
        return 0

    def remove(self, adev) -> None:
        log("remove", dev=adev.name)


_install(AllParent, "parent")
_install(AllDriver, "child")
