"""The bus as data: what ``auxipc ls --json`` prints."""

from __future__ import annotations

from typing import Callable

from auxipc.broker.bus import Bus
from auxipc.broker.lifecycle import BindState, DeviceState
from proto.errno import AuxError
from proto.events import negotiate
from proto.names import match_name, version_str


def _schemas(dev) -> dict:
    """Both sides' schema versions and the contract they share (None when unbound)."""
    parent, child = dev.parent.schema, dev.driver.peer.schema if dev.driver else None
    shared = None
    if child is not None:
        try:
            shared = version_str(negotiate(parent, child))
        except AuxError:
            pass
    return {"parent": version_str(parent), "child": version_str(child) if child else None, "negotiated": shared}


def device_entry(bus: Bus, dev) -> dict:
    child_handles = dev.driver.handles if dev.driver else frozenset()
    events = []
    for spec in bus.catalog:
        receiver = child_handles if spec.direction.allows("parent") else dev.parent.handles
        events.append({"event": spec.name, "code": int(spec.code), "direction": spec.direction.value,
                       "delivery": spec.delivery.value, "context": spec.context.value, "rtnl": spec.rtnl,
                       "since": version_str(spec.since),
                       "parent": spec.code in dev.parent.handles, "child": spec.code in child_handles,
                       "deliverable": bool(dev.driver) and spec.code in receiver})
    return {
        "id": dev.dev_id, "name": dev.label, "match": match_name(dev.name) if dev.name else None,
        "pending": dev.pending, "attrs": dev.attrs,
        "driver": dev.driver.name if dev.driver else None,
        "state": dev.life.state.value,
        "bind": "deferred" if dev.deferred and dev.bind.state is BindState.UNBOUND else dev.bind.state.value,
        "deferred": dev.deferred, "hung": dev.hung or None,
        "refcount": dev.refcount, "holders": dict(dev.refs),
        "leak": dev.life.state is DeviceState.DELETED and dev.refcount > 0,
        "parent": dev.parent.label, "locked_by": dev.lock.owner.what if dev.lock.owner else None,
        "queued": len(dev.lock.queue), "last_error": dev.last_error, "schema": _schemas(dev),
        "events": events}


def device_page(bus: Bus, after: int = -1, budget: int | None = None,
                size: Callable[[dict], int] = lambda d: 0) -> tuple[list[dict], int | None]:
    """The devices with an id above ``after``, in id order, until their ``size`` passes
    ``budget`` (at least one); and the id to continue after (None: that was the last)."""
    devices: list[dict] = []
    used = 0
    for dev_id in sorted(i for i in bus.devices if i > after):
        entry = device_entry(bus, bus.devices[dev_id])
        if budget is not None:
            used += size(entry)
            if devices and used > budget:
                return devices, devices[-1]["id"]
        devices.append(entry)
    return devices, None


def snapshot(bus: Bus, devices: list[dict] | None = None) -> dict:
    """The bus as data; ``devices`` (one page of them) instead of all of them."""
    now = bus.clock()
    if devices is None:
        devices = device_page(bus)[0]
    drivers = [{"name": d.name, "id_table": list(d.id_table), "peer": d.peer.label,
                "bound": [x.name for x in bus.devices.values() if x.driver is d],
                "handles": sorted(bus.catalog.lookup(c).name for c in d.handles if bus.catalog.get(c))}
               for d in bus.drivers.values()]
    peers = [{"role": p.role, "name": p.name, "pid": p.pid, "inc": p.inc, "alive": p.alive,
              "instance": p.instance or None, "index": p.index,
              "state": p.machine.state.value, "schema": version_str(p.schema),
              "last_seen_ms": int((now - p.last_seen) * 1000), "slow_calls": p.slow_calls}
             for p in bus.peers.values()]
    locks = [{"name": lock.name, "holder": lock.owner.task if lock.owner else None,
              "waiters": [op.task for op in lock.queue if not op.cancelled]}
             for lock in bus.lockdep.named.values()]
    return {"epoch": bus.epoch, "schema": bus.catalog.version_str, "devices": devices,
            "drivers": drivers, "peers": peers, "pending": len(bus.pending), "locks": locks,
            "lockdep": {"inversions": bus.lockdep.inversions, "deadlocks": bus.lockdep.deadlocks},
            "warnings": list(bus.warnings),
            "stats": dict(bus.stats)}
