"""The auxiliary-driver process: drivers, their bound devices, and event delivery.

A driver is a class::

    class IdpfEth(AuxDriver):
        name = "idpf_eth"
        id_table = ["ixd.eth"]
        def probe(self, adev, id): ...        # 0/None binds, -ENODEV/-ENXIO reject, -EPROBE_DEFER
                                              # (id: the id_table entry that matched; optional)
        def remove(self, adev): ...           # optional; the device is unbound when it returns
        @handler(Event.RESET_WARN)
        def reset_warn(self, adev, warn): ... # quiesce, then return

and ``ChildRuntime([IdpfEth()]).open()`` registers it. Every delivery to a device
(probe, remove, shutdown, sync and async events) runs under that device's lock:
never concurrently with another, and never after remove() returned.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, NamedTuple

from auxipc.runtime.handlers import collect_handlers, normalize_result
from auxipc.runtime.peer import Runtime
from auxipc.runtime.where import code_site
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import EventSpec

log = logging.getLogger("auxipc.child")


class AuxDeviceId(NamedTuple):
    """An id_table entry (struct auxiliary_device_id): the match name, and data of the
    driver's own that probe() receives with the entry that matched."""
    name: str
    driver_data: Any = None


def id_entries(drv: "AuxDriver") -> list[AuxDeviceId]:
    """A driver's id_table as entries: a bare string is an entry without driver_data."""
    return [AuxDeviceId(e) if isinstance(e, str) else AuxDeviceId(*e) for e in drv.id_table]


def takes_id(probe) -> bool:
    """Whether probe() takes the matched entry (``probe(self, adev, id)``, as the kernel's
    ``probe(auxdev, id)``); ``probe(self, adev)`` is also accepted."""
    try:
        params = [p for p in inspect.signature(probe).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class AuxDriver:
    name: str = ""
    id_table: list = []     # match names, or AuxDeviceId(name, driver_data) / (name, driver_data)
    # KBUILD_MODNAME of the module the driver is in: on the bus the driver is then named
    # "<modname>.<name>" (mlx5_core.eth), so two modules may each have an "eth".
    modname: str = ""

    def probe(self, adev: "ChildDevice", id: AuxDeviceId | None = None):
        return 0

    remove = None      # optional: def remove(self, adev)
    shutdown = None    # optional: def shutdown(self, adev)   (bus shutdown)
    suspend = None     # optional: def suspend(self, adev)    (driven by the parent: mlx5's detach)
    resume = None      # optional: def resume(self, adev)     (mlx5's attach)


class ChildDevice:
    """The auxiliary device as its driver sees it, from probe until remove returns."""

    def __init__(self, rt: "ChildRuntime", dev_id: int, name: str, driver: AuxDriver,
                 parent_handles, parent_schema, attrs: dict | None = None):
        self.rt, self.dev_id, self.name, self.driver = rt, dev_id, name, driver
        self.match = name.rsplit(".", 1)[0]
        # The id_table entry that matched (auxiliary_match_id), as probe() received it.
        self.id = next((e for e in id_entries(driver) if e.name == self.match), None)
        self.topic = b"P:" + name.encode()     # where its async events go
        self.parent_handles = frozenset(parent_handles)
        self.parent_schema = tuple(parent_schema)
        self.attrs: dict = dict(attrs or {})    # the device's attributes, as its parent set them
        self.bound = True
        self.data: dict = {}     # the driver's private state (dev_set_drvdata)
        self.refs = 0

    def supports(self, event) -> bool:
        """Whether the parent handles ``event`` (discovery, learnt at probe)."""
        return self.rt.catalog.lookup(event).code in self.parent_handles

    def call(self, event, payload=None, timeout: float = 5.0):
        """Sync child->parent event; returns the reply payload (or None), raises AuxError."""
        spec = self.rt.spec_to_send(event)
        return self.rt.call_event(self.dev_id, spec, payload, timeout)

    def notify(self, event, payload=None) -> int:
        """Async child->parent event; -ENODEV when unbound, -EOPNOTSUPP when the parent
        does not handle it. Returns the sequence number."""
        spec = self.rt.spec_to_send(event)
        if not self.bound:
            raise AuxError(Errno.ENODEV, f"{self.name} is not bound")
        if spec.code not in self.parent_handles:
            raise AuxError(Errno.EOPNOTSUPP, f"parent does not handle {spec.name}")
        return self.rt.publish_event(self.dev_id, self.topic, spec, payload)

    def get(self) -> int:
        result, _ = self.rt.request(lambda r: E.DevGet(r=r, dev=self.dev_id), what="get_device")
        self.rt.check(result, "get_device")
        self.refs += 1
        self.rt.got_ref(self.name)
        return result.d["refcount"]

    def put(self) -> int:
        result, _ = self.rt.request(lambda r: E.DevPut(r=r, dev=self.dev_id), what="put_device")
        self.rt.check(result, "put_device")
        self.refs -= 1
        self.rt.put_ref(self.name)
        return result.d["refcount"]

    def __repr__(self):
        return f"<ChildDevice {self.name} #{self.dev_id} {'bound' if self.bound else 'unbound'}>"


class ChildRuntime(Runtime):
    role = "child"
    locks_devices = True

    def __init__(self, drivers: list[AuxDriver], name: str | None = None, **kw):
        for d in drivers:
            if d.modname and not d.name.startswith(d.modname + "."):
                d.name = f"{d.modname}.{d.name}"    # driver.name, as __auxiliary_driver_register sets it
        super().__init__(name or "+".join(d.name for d in drivers) or "child", **kw)
        self.drivers = {d.name: d for d in drivers}
        self.handlers = {d.name: collect_handlers(d, self.catalog) for d in drivers}
        self.devices: dict[int, ChildDevice] = {}
        self.orphans: dict[int, ChildDevice] = {}   # bound before a broker restart, not yet taken back
        self.registered: list[str] = []
        self.refused: dict[int, str] = {}   # device id -> why matching refused to probe it
    def handles(self) -> set[int]:
        return {code for table in self.handlers.values() for code in table}

    def topic_for(self, dev_id: int) -> bytes | None:
        adev = self.devices.get(dev_id)
        return b"P:" + adev.name.encode() if adev is not None else None

    def receiver_handles(self, dev_id: int) -> frozenset | None:
        adev = self.devices.get(dev_id)
        return adev.parent_handles if adev is not None else None

    def subscriptions(self) -> list[bytes]:
        return sorted({f"C:{e.name}.".encode() for d in self.drivers.values() for e in id_entries(d)})

    def on_notice(self, msg) -> None:
        if isinstance(msg, E.Unbind) and msg.dev not in self.devices:
            # Matching refused to probe a device for one of our drivers (schema majors differ).
            log.warning("%s", msg.reason)
            self.refused[msg.dev] = msg.reason
            return
        super().on_notice(msg)

    def on_registered(self) -> None:
        for drv in self.drivers.values():
            self.driver_register(drv)

    def driver_register(self, drv: AuxDriver) -> list[str]:
        """auxiliary_driver_register: matching devices are probed before it returns."""
        task = self.task
        result, _ = self.request(lambda r: E.DrvRegister(
            r=r, name=drv.name, task=task, id_table=tuple(e.name for e in id_entries(drv)),
            probe=callable(getattr(drv, "probe", None)),
            remove=callable(drv.remove), shutdown=callable(drv.shutdown),
            handles=sorted(self.handlers[drv.name])), timeout=None, what=f"register driver {drv.name}")
        self.check(result, f"register driver {drv.name}")
        self.registered.append(drv.name)
        return result.d.get("probed", [])

    def driver_unregister(self, drv: AuxDriver) -> None:
        """auxiliary_driver_unregister: remove() runs for every bound device first."""
        task = self.task
        result, _ = self.request(lambda r: E.DrvUnregister(r=r, name=drv.name, task=task), timeout=None,
                                 what=f"unregister driver {drv.name}")
        self.check(result, f"unregister driver {drv.name}")
        self.registered.remove(drv.name)

    def on_close(self) -> None:
        for name in list(self.registered):
            self.driver_unregister(self.drivers[name])

    def device_data(self) -> dict:
        return {adev.name: adev.data for adev in self.devices.values()}

    def device_name(self, dev_id: int) -> str:
        adev = self.devices.get(dev_id)
        return adev.name if adev is not None else ""

    def handler_site(self, dev_id: int, code: int) -> str:
        adev = self.devices.get(dev_id)
        fn = self.handlers[adev.driver.name].get(code) if adev is not None else None
        return code_site(fn) if fn is not None else ""

    ORPHAN_GRACE = 10.0   # seconds a device bound before a broker restart waits to be taken back

    def restore_state(self) -> dict:
        held = {**self.orphans, **self.devices}
        return {"bound": [{"name": d.name, "driver": d.driver.name, "refs": d.refs} for d in held.values()]}

    def on_reregistered(self) -> None:
        """Drivers again; devices bound before come back through PROBE{adopt}. Those
        no parent adds again within ORPHAN_GRACE are removed here (the device is gone)."""
        self.orphans.update(self.devices)
        self.devices = {}
        self.registered = []
        for drv in self.drivers.values():
            self.driver_register(drv)
        self.call_later(self.ORPHAN_GRACE, self._drop_orphans)

    def _drop_orphans(self) -> None:
        for dev_id, adev in list(self.orphans.items()):
            del self.orphans[dev_id]
            adev.bound = False
            log.warning("%s: %s did not come back after the broker restart: removed", adev.driver.name, adev.name)
            if callable(adev.driver.remove):
                self.guard(lambda adev=adev: adev.driver.remove(adev))

    # ---- deliveries (each under the device's lock) ---------------------------------------

    def serve(self, msg, payload):
        match msg:
            case E.Probe():
                return self._probe(msg)
            case E.Remove():
                return self._remove(msg)
            case E.Shutdown():
                adev = self._bound(msg.dev)
                if callable(adev.driver.shutdown):
                    adev.driver.shutdown(adev)
                return 0, "", None
            case E.Request():
                adev = self._bound(msg.dev)
                spec, fn = self._handler(adev, msg.ev)
                if self.faults.rules:
                    self.fault_point("request", spec.name)
                    if spec.name == "RESET_WARN":
                        self.fault_point("reset", spec.name)
                value = E.load_payload(spec.payload, payload)
                e, reply = normalize_result(spec, self.invoke(spec, fn, adev, value, adev.driver.name, msg.rtnl))
                return e, "", reply
            case E.Pm():
                adev = self._bound(msg.dev)
                fn = getattr(adev.driver, msg.op, None)
                if callable(fn):
                    e, _ = normalize_result(None, fn(adev))
                    return e, "", None
                return 0, "", None
            case E.Inject():
                return self._inject(msg, payload)
        return super().serve(msg, payload)

    def _bound(self, dev_id: int) -> ChildDevice:
        adev = self.devices.get(dev_id)
        if adev is None:
            raise AuxError(Errno.ENODEV, f"device #{dev_id} is not bound to {self.name}")
        return adev

    def _handler(self, adev: ChildDevice, code: int) -> tuple[EventSpec, object]:
        spec = self.catalog.get(code)
        if spec is None:
            raise AuxError(Errno.EOPNOTSUPP, f"event {code} is not in schema {self.catalog.version_str}")
        fn = self.handlers[adev.driver.name].get(code)
        if fn is None:
            raise AuxError(Errno.EOPNOTSUPP, f"driver {adev.driver.name} has no handler for {spec.name}")
        return spec, fn

    def _probe(self, msg: E.Probe):
        drv = self.drivers.get(msg.driver)
        if drv is None:
            raise AuxError(Errno.ENODEV, f"no driver {msg.driver} in this process")
        if msg.adopt:
            old = next((d for d in self.orphans.values() if d.name == msg.name and d.driver is drv), None)
            if old is not None:
                # Bound before the broker restarted: same device, new id; probe() already ran.
                del self.orphans[old.dev_id]
                old.dev_id, old.bound = msg.dev, True
                old.parent_handles, old.parent_schema = frozenset(msg.parent_handles), tuple(msg.parent_schema)
                self.devices[msg.dev] = old
                self.stats["adopted"] += 1
                log.info("%s: took %s back after the broker restart (no second probe)", drv.name, msg.name)
                return 0, "adopted", None
        if self.faults.rules:
            self.fault_point("probe")
        adev = ChildDevice(self, msg.dev, msg.name, drv, msg.parent_handles, msg.parent_schema, msg.attrs)
        self.devices[msg.dev] = adev     # probe may already call the parent
        try:
            rc = drv.probe(adev, adev.id) if takes_id(drv.probe) else drv.probe(adev)
            e, _ = normalize_result(None, rc)
        except BaseException as exc:
            self.devices.pop(msg.dev, None)
            self._probe_failed(drv, msg.name, f"raised {type(exc).__name__}: {exc}")
            raise
        if e:
            self.devices.pop(msg.dev, None)
            adev.bound = False
            if e not in (-Errno.ENODEV, -Errno.ENXIO, -Errno.EPROBE_DEFER):   # a reject or a deferral is no failure
                self._probe_failed(drv, msg.name, f"returned {errno_name(e)}")
        else:
            log.info("%s: probed %s", drv.name, msg.name)
        return e, "", None

    def _probe_failed(self, drv: AuxDriver, dev: str, how: str) -> None:
        self.bug("probe_failed", f"probe of {dev} by {drv.name} {how}", code_site(drv.probe), dev=dev,
                 driver=drv.name)

    def _remove(self, msg: E.Remove):
        adev = self.devices.get(msg.dev)
        if adev is None:
            return 0, "", None
        if self.faults.rules:
            self.fault_point("remove")
        try:
            if callable(adev.driver.remove):
                adev.driver.remove(adev)
        finally:
            adev.bound = False
            self.devices.pop(msg.dev, None)
            log.info("%s: removed %s (%s)", adev.driver.name, adev.name, msg.reason)
        return 0, "", None

    def _inject(self, msg: E.Inject, payload):
        adev = self._bound(msg.dev)
        spec = self.catalog.lookup(msg.ev)     # -EOPNOTSUPP if this side's schema lacks it
        obj = E.decode_payload_frame(payload)
        op = getattr(adev.driver, "user_request", None)
        if callable(op):
            # The driver's own path for a user-space request (its dcbnl, ethtool, netshaper
            # ops): it forwards to the parent and keeps its state. Returns the reply or the seq.
            self.spec_to_send(spec)           # -EINVAL for the other direction, before the payload
            out = op(adev, spec, spec.payload.from_wire(obj, "$.payload", strict=True), msg.timeout_ms / 1000)
            if spec.sync:
                return 0, "", out.to_wire() if out is not None else None
            return 0, f"published as seq {out}", None
        if spec.sync:
            reply = adev.call(spec, obj, timeout=msg.timeout_ms / 1000)
            return 0, "", reply.to_wire() if reply is not None else None
        seq = adev.notify(spec, obj)
        return 0, f"published as seq {seq}", None

    def on_async(self, topic, msg: E.AsyncEvent, items):
        adev = self.devices.get(msg.dev)
        if adev is None or topic[2:] != adev.name.encode():
            self.stats["async_unbound"] += len(items) // 2   # skipped like the kernel skips an unbound device
            return
        devices, dev_id = self.devices, msg.dev
        self.run_async(adev, items, self.handlers[adev.driver.name], adev.driver.name,
                       lambda: devices.get(dev_id) is adev)
