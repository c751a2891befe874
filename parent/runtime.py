"""The PCI-owner process: its auxiliary devices and its side of the events.

A parent model is a class::

    class Ixd(ParentModel):
        modname = "ixd"
        def probe(self):                       # the PCI probe: create aux devices
            self.eth = self.device("eth", 0, release=self.eth_release)
            self.eth.init(); self.eth.add()
        @handler(Event.REQUEST_RESET)
        def request_reset(self, adev, req): ...

``ParentDevice`` mirrors the kernel's three-step creation and two-step removal:
``init()`` (checks parent and name), ``add()`` (names the device
``<modname>.<name>.<id>`` and binds a driver before it returns), ``delete()``
(the child's remove() has completed when it returns), ``uninit()`` (drops the
parent's reference; ``release`` runs at the last put, maybe much later).
"""

from __future__ import annotations

import logging
from typing import Callable

from auxipc.runtime.dispatch import BrokerLost, EventsIn
from auxipc.runtime.handlers import collect_handlers, normalize_result
from auxipc.runtime.peer import Runtime
from auxipc.runtime.where import code_site
from auxipc.states import DeviceState
from proto import envelope as E
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.parent")


class ParentDevice:
    """An auxiliary_device owned by this parent."""

    def __init__(self, rt: "ParentRuntime | None", name: str, id: int, release: Callable | None = None,
                 attrs: dict | None = None):
        self.rt, self.short, self.id, self.release_cb = rt, name, id, release
        self.attrs: dict = dict(attrs or {})   # sysfs/udev attributes: set before add(), as drivers expect
        self.dev_id = 0
        self.name = ""            # full name, known after init
        self.topic = b""
        self.state: DeviceState | None = None    # None until init()
        self.owned = True         # the parent's reference: put by uninit()
        self.restore_added = False  # a restore cut short owes this device an add()
        self.driver: str | None = None
        self.child_handles: frozenset = frozenset()
        self.child_inc = 0
        self.child_schema = (0, 0)
        self.last_error = ""      # why no driver could bind (e.g. a schema major mismatch)
        self.data: dict = {}
        self.early: list[EventsIn] = []   # async events that beat the BIND notice here (other socket)

    def _req(self, make, what: str, timeout: float | None = 30.0) -> dict:
        result, _ = self.rt.request(make, timeout=timeout, what=what)
        self.rt.check(result, what)
        return result.d

    def init(self) -> None:
        """auxiliary_device_init: -EINVAL without a parent or a name."""
        if self.rt is None:
            raise AuxError(Errno.EINVAL, "auxiliary_device_init: no parent")
        if not self.short:
            raise AuxError(Errno.EINVAL, "auxiliary_device_init: name is empty")
        d = self._req(lambda r: E.DevInit(r=r, name=self.short, id=self.id, release=self.release_cb is not None),
                      "auxiliary_device_init")
        self.dev_id, self.name, self.state = d["dev"], d["name"], DeviceState.INITIALIZED
        self.owned = True
        self.topic = b"C:" + self.name.encode()     # where its async events go
        self.rt.devices[self.dev_id] = self

    def add(self) -> str | None:
        """auxiliary_device_add: returns the bound driver's name (or None). On error
        the caller still owns the device and must uninit() it."""
        task = self.rt.task
        # No deadline: add returns once probe() did, however long it takes (the broker
        # reports a hung probe; a dead driver process ends it).
        d = self._req(lambda r: E.DevAdd(r=r, dev=self.dev_id, task=task, attrs=self.attrs),
                      f"auxiliary_device_add {self.name}", timeout=None)
        self.state = DeviceState.ADDED
        return d.get("driver")

    def delete(self) -> None:
        """auxiliary_device_delete: unbinds synchronously."""
        task = self.rt.task
        # No deadline: delete returns once remove() did (auxiliary_device_delete cannot
        # return before it); the broker reports a hung remove.
        self._req(lambda r: E.DevDelete(r=r, dev=self.dev_id, task=task), f"auxiliary_device_delete {self.name}",
                  timeout=None)
        self.state = DeviceState.DELETED
        self.driver = None

    def uninit(self) -> None:
        """auxiliary_device_uninit: put the parent's reference. The reference is put
        once: ``state`` stays what the bus says (DELETED until the last put), so a
        second uninit() is a no-op here rather than the kernel's double put."""
        if not self.owned:
            return
        self._req(lambda r: E.DevUninit(r=r, dev=self.dev_id), f"auxiliary_device_uninit {self.name}")
        self.owned = False

    def suspend(self) -> None:
        """Call the driver's suspend() under device_lock (mlx5 uses it as detach)."""
        task = self.rt.task
        self._req(lambda r: E.DevPm(r=r, dev=self.dev_id, op="suspend", task=task), f"suspend {self.name}")

    def resume(self) -> None:
        """Call the driver's resume() under device_lock (mlx5's attach)."""
        task = self.rt.task
        self._req(lambda r: E.DevPm(r=r, dev=self.dev_id, op="resume", task=task), f"resume {self.name}")

    def get(self) -> int:
        return self._req(lambda r: E.DevGet(r=r, dev=self.dev_id), "get_device")["refcount"]

    def put(self) -> int:
        return self._req(lambda r: E.DevPut(r=r, dev=self.dev_id), "put_device")["refcount"]

    @property
    def bound(self) -> bool:
        return self.driver is not None

    def supports(self, event) -> bool:
        return self.rt.catalog.lookup(event).code in self.child_handles

    def call(self, event, payload=None, timeout: float = 5.0):
        """Sync parent->child event, delivered under the child's device_lock."""
        spec = self.rt.spec_to_send(event)
        return self.rt.call_event(self.dev_id, spec, payload, timeout)

    def notify(self, event, payload=None) -> int:
        """Async parent->child event. Skipped with -ENODEV when no driver is bound and
        -EOPNOTSUPP when the driver has no handler (the kernel's NULL checks)."""
        spec = self.rt.spec_to_send(event)
        if self.driver is None:
            if spec.state and self.name:
                # Hardware state (link) a driver binding later must learn: kept for the replay.
                self.rt.publisher.remember_state(b"C:" + self.name.encode(), spec, payload)
            raise AuxError(Errno.ENODEV, f"{self.name or self.short} has no bound driver")
        if spec.code not in self.child_handles:
            raise AuxError(Errno.EOPNOTSUPP, f"driver {self.driver} has no handler for {spec.name}")
        return self.rt.publish_event(self.dev_id, self.topic, spec, payload)

    def __repr__(self):
        state = "new" if self.state is None else self.state.value if self.owned else f"{self.state.value}, uninit"
        return f"<ParentDevice {self.name or self.short} #{self.dev_id} {state} driver={self.driver}>"


class ParentModel:
    """A PCI driver that owns auxiliary devices. Subclasses set ``modname``."""

    modname: str = ""

    def __init__(self):
        self.rt: ParentRuntime | None = None

    def device(self, name: str, id: int = 0, release: Callable | None = None,
               attrs: dict | None = None) -> ParentDevice:
        return ParentDevice(self.rt, name, id, release, attrs)

    @property
    def index(self) -> int:
        """This instance's index among the running instances of its model (0 when alone),
        from the bus, as a driver's IDA numbers its PCI functions: number the aux devices
        from it so that two instances do not clash (``ixd.eth.0``, ``ixd.eth.1``)."""
        return self.rt.index

    def probe(self) -> None:
        """PCI probe: create, init and add the auxiliary devices."""

    def remove(self) -> None:
        """PCI remove: delete and uninit every device still added (the default does that)."""
        for adev in list(self.rt.devices.values()):
            if adev.state is DeviceState.ADDED:
                adev.delete()
            if adev.state in (DeviceState.INITIALIZED, DeviceState.DELETED) and adev.owned:
                adev.uninit()

    def on_bind(self, adev: ParentDevice) -> None:
        """A driver bound ``adev``."""

    def on_restored(self) -> None:
        """The devices were added again after a broker restart."""

    def on_unbind(self, adev: ParentDevice, reason: str) -> None:
        """``adev`` lost its driver (remove, driver exit or crash)."""


class ParentRuntime(Runtime):
    role = "parent"

    def __init__(self, model: ParentModel, instance: str = "", **kw):
        if not model.modname:
            raise AuxError(Errno.EINVAL, f"{type(model).__name__}: modname is empty")
        super().__init__(model.modname, **kw)
        self.instance = instance
        self.model = model
        model.rt = self
        self.handlers = collect_handlers(model, self.catalog)
        self.devices: dict[int, ParentDevice] = {}
        self.interrupted: list[ParentDevice] = []   # devices whose restore the broker cut short

    def handles(self) -> set[int]:
        return set(self.handlers)

    def topic_for(self, dev_id: int) -> bytes | None:
        adev = self.devices.get(dev_id)
        return b"C:" + adev.name.encode() if adev is not None and adev.bound else None

    def receiver_handles(self, dev_id: int) -> frozenset | None:
        adev = self.devices.get(dev_id)
        return adev.child_handles if adev is not None and adev.bound else None

    @property
    def index(self) -> int:
        """This instance's index among the instances of its model (the bus allocates it)."""
        return self.welcome.get("index") or 0

    def restore_state(self) -> dict:
        return {"index": self.welcome["index"]} if self.welcome.get("index") is not None else {}

    def subscriptions(self) -> list[bytes]:
        return [f"P:{self.model.modname}.".encode()]

    def on_registered(self) -> None:
        self.model.probe()

    def on_close(self) -> None:
        self.model.remove()
        # What remove() left is warned by the broker when this process unregisters; this
        # says where: the model's remove().
        added = [a.name for a in self.devices.values() if a.state is DeviceState.ADDED]
        kept = [a.name for a in self.devices.values() if a.owned and a.state is not DeviceState.ADDED]
        for kind, names in (("devices_outlive_parent", added), ("uninit_missing", kept)):
            if names:
                self.bug(kind, ", ".join(names), code_site(self.model.remove))

    def device_data(self) -> dict:
        return {adev.name: adev.data for adev in self.devices.values() if adev.name}

    def device_name(self, dev_id: int) -> str:
        adev = self.devices.get(dev_id)
        return adev.name if adev is not None else ""

    def handler_site(self, dev_id: int, code: int) -> str:
        fn = self.handlers.get(code)
        return code_site(fn) if fn is not None else ""

    def on_reregistered(self) -> None:
        """A new broker (or we were declared dead): init and add again every device
        that was on the bus; the bound driver takes it back without a second probe."""
        # A restore the broker's loss cut short (``interrupted``) is retried here: its
        # devices would otherwise be gone for good after a second broker restart.
        old = [*self.devices.values(), *self.interrupted]
        self.devices, self.interrupted = {}, []
        for adev in old:
            adev.driver, adev.child_handles, adev.early = None, frozenset(), []
            if adev.state not in (DeviceState.INITIALIZED, DeviceState.ADDED) or not adev.owned:
                continue
            want_added = adev.state is DeviceState.ADDED or adev.restore_added
            try:
                adev.init()
                if want_added:
                    adev.add()
                adev.restore_added = False
            except BrokerLost as exc:
                self.devices.pop(adev.dev_id, None)
                adev.restore_added = want_added
                self.interrupted.append(adev)
                log.warning("restoring %s cut short (%s): retried at the next registration", adev.name, exc)
            except AuxError as exc:
                log.error("could not restore %s: %s", adev.name, exc)
        self.model.on_restored()

    def on_notice(self, msg) -> None:
        adev = self.devices.get(getattr(msg, "dev", -1))
        if adev is None:
            log.info("notice for an unknown device: %s", msg)
            return
        match msg:
            case E.Bind():
                adev.driver, adev.child_inc = msg.driver, msg.inc
                adev.child_handles, adev.child_schema = frozenset(msg.handles), tuple(msg.schema)
                early, adev.early = adev.early, []
                self.model.on_bind(adev)
                self.replay_state(adev.dev_id)     # the new driver gets the current link state first
                for ev in early:
                    self.on_async(ev.topic, ev.msg, ev.items)
            case E.Unbind():
                if adev.driver is None:     # never bound: matching refused it (schema majors differ)
                    log.warning("%s: %s", adev.name, msg.reason)
                    adev.last_error = msg.reason
                adev.driver, adev.child_handles = None, frozenset()
                self.stats["async_unbound"] += sum(len(ev.items) // 2 for ev in adev.early)
                adev.early = []
                self.model.on_unbind(adev, msg.reason)
            case E.Release():
                adev.state = DeviceState.RELEASED
                self.devices.pop(adev.dev_id, None)
                if adev.release_cb is not None:
                    adev.release_cb(adev)

    def serve(self, msg, payload):
        match msg:
            case E.Request():
                adev = self.devices.get(msg.dev)
                if adev is None:
                    raise AuxError(Errno.ENODEV, f"device #{msg.dev} is not owned by {self.name}")
                spec = self.catalog.get(msg.ev)
                fn = self.handlers.get(msg.ev)
                if spec is None or fn is None:
                    raise AuxError(Errno.EOPNOTSUPP, f"parent {self.name} has no handler for event {msg.ev}")
                if self.faults.rules:
                    self.fault_point("request", spec.name)
                value = E.load_payload(spec.payload, payload)
                e, reply = normalize_result(spec, self.invoke(spec, fn, adev, value, self.name, msg.rtnl))
                return e, "", reply
            case E.Inject():
                adev = self.devices.get(msg.dev)
                if adev is None:
                    raise AuxError(Errno.ENODEV, f"device #{msg.dev} is not owned by {self.name}")
                spec = self.catalog.lookup(msg.ev)     # -EOPNOTSUPP if this side's schema lacks it
                obj = E.decode_payload_frame(payload)
                if spec.sync:
                    reply = adev.call(spec, obj, timeout=msg.timeout_ms / 1000)
                    return 0, "", reply.to_wire() if reply is not None else None
                return 0, f"published as seq {adev.notify(spec, obj)}", None
        return super().serve(msg, payload)

    def on_async(self, topic, msg: E.AsyncEvent, items):
        adev = self.devices.get(msg.dev)
        if adev is None or topic[2:] != adev.name.encode():
            self.stats["async_unbound"] += len(items) // 2
            return
        if adev.driver is None:
            if adev.state is DeviceState.ADDED and len(adev.early) < 1024:
                adev.early.append(EventsIn(msg, items, topic))   # replayed when BIND arrives
            else:
                self.stats["async_unbound"] += len(items) // 2
            return
        if msg.inc != adev.child_inc or msg.epoch != self.epoch:
            self.stats["async_stale"] += len(items) // 2     # from an earlier incarnation of the child
            return
        inc = msg.inc
        self.run_async(adev, items, self.handlers, self.name,
                       lambda: adev.driver is not None and adev.child_inc == inc)
