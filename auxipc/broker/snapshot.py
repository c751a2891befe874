"""The bus as data: what ``auxipc ls --json`` prints."""

from __future__ import annotations

from proto.errno import AuxError, Errno
from proto.events import negotiate
from proto.names import match_name, version_str
from auxipc.broker.bus import Bus
from auxipc.broker.lifecycle import DeviceState


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


PAGE = 100    # devices per ``ls`` answer: one answer stays far below the bus's message limit


def snapshot(bus: Bus, offset: int = 0, limit: int | None = None) -> dict:
    """The bus; ``devices`` from the ``offset``-th (by id) on, at most ``limit`` of them
    (``devices_total`` says how many there are: a client pages through them)."""
    now = bus.clock()
    devices = []
    ordered = sorted(bus.devices.values(), key=lambda d: d.dev_id)
    for dev in ordered[offset:None if limit is None else offset + limit]:
        child_handles = dev.driver.handles if dev.driver else frozenset()
        events = []
        for spec in bus.catalog:
            receiver = child_handles if spec.direction.allows("parent") else dev.parent.handles
            events.append({"event": spec.name, "code": int(spec.code), "direction": spec.direction.value,
                           "delivery": spec.delivery.value, "context": spec.context.value, "rtnl": spec.rtnl,
                           "since": version_str(spec.since),
                           "parent": spec.code in dev.parent.handles, "child": spec.code in child_handles,
                           "deliverable": bool(dev.driver) and spec.code in receiver})
        devices.append({
            "id": dev.dev_id, "name": dev.name, "match": match_name(dev.name),
            "driver": dev.driver.name if dev.driver else None,
            "state": dev.life.state.value, "bind": dev.bind.state.value,
            "refcount": dev.refcount, "holders": dict(dev.refs),
            "leak": dev.life.state is DeviceState.DELETED and dev.refcount > 0,
            "parent": dev.parent.label, "locked_by": dev.lock.owner.what if dev.lock.owner else None,
            "queued": len(dev.lock.queue), "last_error": dev.last_error, "schema": _schemas(dev),
            "events": events})
    drivers = [{"name": d.name, "id_table": list(d.id_table), "peer": d.peer.label,
                "bound": [x.name for x in bus.devices.values() if x.driver is d],
                "handles": sorted(bus.catalog.lookup(c).name for c in d.handles if bus.catalog.get(c))}
               for d in bus.drivers.values()]
    peers = [{"role": p.role, "name": p.name, "pid": p.pid, "inc": p.inc, "alive": p.alive,
              "state": p.machine.state.value, "schema": version_str(p.schema),
              "last_seen_ms": int((now - p.last_seen) * 1000), "slow_calls": p.slow_calls}
             for p in bus.peers.values()]
    locks = [{"name": lock.name, "holder": lock.owner.task if lock.owner else None,
              "waiters": [op.task for op in lock.queue if not op.cancelled]}
             for lock in bus.lockdep.named.values()]
    return {"epoch": bus.epoch, "schema": bus.catalog.version_str, "devices": devices, "devices_total": len(ordered),
            "drivers": drivers, "peers": peers, "pending": len(bus.pending), "locks": locks,
            "lockdep": {"inversions": bus.lockdep.inversions, "deadlocks": bus.lockdep.deadlocks},
            "stats": dict(bus.stats)}


def ls_page(args: dict) -> tuple[int, int]:
    """``ls``'s {offset, limit} (limit at most PAGE; the default is one page from 0)."""
    offset, limit = args.get("offset", 0), args.get("limit", PAGE)
    for key, value in (("offset", offset), ("limit", limit)):
        if type(value) is not int or value < 0:
            raise AuxError(Errno.EINVAL, f"$.header.args.{key}: {value!r} is not a non-negative integer")
    return offset, min(limit, PAGE)
