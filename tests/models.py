"""Test-only parent models and child drivers, loaded by the spawned processes as
``tests.models:Name`` (``auxipc parent --model tests.models:Pair``).

They are configured through the environment, because each runs in its own
process started by the fixtures (tests/conftest.py):

``AXT_LOG``
    A file each process appends JSON lines to: ``{"t": monotonic, "pid", "what", ...}``.
    Tests read it to observe what ran, in which order and when (CLOCK_MONOTONIC
    is system-wide, so timestamps of different processes compare).
``AXT_MOD``, ``AXT_DEVS``
    Parent ``Pair``: its modname (default ``tp``) and the devices it adds,
    ``name:id`` comma-separated (default ``eth:0,rdma:0``).
``AXT_IDS`` / ``AXT_IDS_<DRIVER NAME>``
    A driver's id_table, comma-separated (default ``tp.eth,tp.rdma``).
``AXT_SLOW``
    Seconds the driver's RESET_WARN handler takes: ``FUNC`` returns at once,
    ``DEV`` blocks (``time.sleep``: the process serves nothing meanwhile, only
    its heartbeat thread runs), ``GLOBAL`` waits while pumping (as a handler
    blocked in a sync call does: requests for *other* devices are served).
``AXT_REMOVE_SLOW``
    Seconds ``remove()`` takes, pumping meanwhile (like GLOBAL above).
``AXT_CALL_LOOP``
    Rec: in a FUNC RESET_WARN, call SET_MAC back to back until a LINK_CHANGE arrives (at most
    this many times), logging calls-start / calls-end.
``AXT_HOLD``
    Match names whose devices the driver takes a reference on in probe
    (``adev.get()``); every held reference is put by the next RESET_WARN.
``AXT_DEFERS``
    How many times ``Defer`` returns -EPROBE_DEFER per device before binding.
``AXT_PROBE_SLOW``
    Seconds ``SlowProbe``'s probe() takes (``time.sleep``), logging probe / probe-end.
``AXT_NEEDS``
    ``Needs`` defers the probe of every device until this device is bound in its process.

Parent ``Pair`` handlers:
- SET_MAC (sync): replies ``filter_id = addr[5]``;
- REQUEST_RESET (sync): FUNC returns 0; DEV deletes and uninits, inside the
  handler, the devices named in $AXT_DELETE (default: every other device of the
  parent still added), and returns 0 once they are gone; GLOBAL waits $AXT_PSLOW
  seconds pumping (so further requests are delivered, nested, meanwhile), then
  returns 0; FLR -EINVAL;
- POST_CONFIG (async): logged.
"""

from __future__ import annotations

import json
import os
import time

from auxipc import AuxDriver, ParentModel, handler
from proto.errno import AuxError, Errno
from proto.events import Event, ResetType, SetMac, SetMacReply


def log(what: str, **fields) -> None:
    """Append one JSON line to $AXT_LOG (one write: lines never interleave)."""
    path = os.environ.get("AXT_LOG")
    if not path:
        return
    rec = {"t": time.monotonic(), "pid": os.getpid(), "what": what, **fields}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


def _env_list(*names: str, default: str) -> list[str]:
    for name in names:
        if name in os.environ:
            return [x for x in os.environ[name].split(",") if x]
    return [x for x in default.split(",") if x]


def _pump_for(rt, seconds: float) -> None:
    """Wait ``seconds`` while serving the runtime (what a handler in a sync call does)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        rt.pump(left)


# ---- parents ---------------------------------------------------------------------------

class Pair(ParentModel):
    """Adds ``tp.eth.0`` and ``tp.rdma.0`` (or $AXT_MOD / $AXT_DEVS)."""

    modname = "tp"
    continue_on_add_error = False

    def __init__(self, devices: int = 1):
        super().__init__()
        self.modname = os.environ.get("AXT_MOD", "tp")
        self.spec = [(n, int(i)) for n, _, i in (d.rpartition(":") for d in
                                                  _env_list("AXT_DEVS", default="eth:0,rdma:0"))]

    def probe(self) -> None:
        for name, i in self.spec:
            adev = self.device(name, i, release=self.release)
            adev.init()
            try:
                driver = adev.add()
            except AuxError as exc:
                # A failed add still needs uninit (the caller owns the device).
                log("add-failed", dev=adev.name, errno=exc.name, message=exc.message)
                adev.uninit()
                if not self.continue_on_add_error:
                    raise
                continue
            log("added", dev=adev.name, driver=driver)

    def release(self, adev) -> None:
        log("release", dev=adev.name)

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req) -> SetMacReply:
        log("SET_MAC", dev=adev.name, addr=req.addr.hex())
        return SetMacReply(addr=req.addr, filter_id=req.addr[5])

    @handler(Event.REQUEST_RESET)
    def request_reset(self, adev, req) -> int:
        log("REQUEST_RESET", dev=adev.name, reset_type=req.reset_type.name)
        if req.reset_type is ResetType.FUNC:
            return 0
        if req.reset_type is ResetType.GLOBAL:
            _pump_for(self.rt, float(os.environ.get("AXT_PSLOW", "0")))
            return 0
        if req.reset_type is not ResetType.DEV:
            return -Errno.EINVAL
        names = _env_list("AXT_DELETE", default="")
        for other in list(self.rt.devices.values()):
            if other is adev or other.state != "added" or (names and other.name not in names):
                continue
            log("delete-start", dev=other.name)
            other.delete()
            log("delete-done", dev=other.name)
            other.uninit()
            log("uninit-done", dev=other.name)
        return 0

    @handler(Event.POST_CONFIG)
    def post_config(self, adev, cfg) -> None:
        log("POST_CONFIG", dev=adev.name, vport_id=cfg.vport_id, mtu=cfg.mtu)


class Leaky(Pair):
    """Its PCI remove() returns with its devices still added (and not uninit'd): the bus
    cleans up after it, and reports it (the kernel's use-after-free)."""

    def remove(self) -> None:
        log("remove-returns", devices=[a.name for a in self.rt.devices.values() if a.state == "added"])


class EarlyUninit(Pair):
    """Its PCI remove() uninits each device before deleting it (a put, in the kernel)."""

    def remove(self) -> None:
        for adev in list(self.rt.devices.values()):
            adev.uninit()
            log("uninit-done", dev=adev.name)
            adev.delete()
            log("delete-done", dev=adev.name)


class WithAttrs(Pair):
    """Pair whose devices carry attributes, set before add (a subfunction number, a role)."""

    def device(self, name, id=0, release=None, attrs=None):
        return super().device(name, id, release, {"sfnum": id + 3, "role": "uplink", "trusted": True})


class Dup(Pair):
    """Adds ``tp.eth.0`` twice: the second add fails -EEXIST, is logged and uninit."""

    continue_on_add_error = True

    def __init__(self, devices: int = 1):
        super().__init__(devices)
        self.spec = [("eth", 0), ("eth", 0)]


# ---- drivers ---------------------------------------------------------------------------

class Rec(AuxDriver):
    """Records every delivery to $AXT_LOG. Handles LINK_CHANGE, FW_EVENT and
    RESET_WARN, deliberately not PREPARE_DETACH."""

    name = "tdrv"

    def __init__(self):
        self.id_table = _env_list(f"AXT_IDS_{self.name.upper()}", "AXT_IDS", default="tp.eth,tp.rdma")
        self.slow = float(os.environ.get("AXT_SLOW", "1.0"))
        self.remove_slow = float(os.environ.get("AXT_REMOVE_SLOW", "0"))
        self.hold = set(_env_list("AXT_HOLD", default=""))
        self.held: list = []
        self.call_loop = int(os.environ.get("AXT_CALL_LOOP", "0"))
        self.links_seen = 0

    def probe(self, adev):
        log("probe", dev=adev.name, driver=self.name)
        if adev.attrs:
            log("attrs", dev=adev.name, attrs=adev.attrs)
        if adev.match in self.hold:
            refcount = adev.get()
            self.held.append(adev)
            log("get", dev=adev.name, refcount=refcount)
        return 0

    def remove(self, adev) -> None:
        log("remove-start", dev=adev.name, driver=self.name)
        if self.remove_slow:
            _pump_for(adev.rt, self.remove_slow)
        log("remove-end", dev=adev.name, driver=self.name)

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev, link) -> None:
        self.links_seen += 1
        log("LINK_CHANGE", dev=adev.name, up=link.up, speed_mbps=link.speed_mbps, duplex=link.duplex.name)

    @handler(Event.FW_EVENT)
    def fw_event(self, adev, ev) -> None:
        log("FW_EVENT", dev=adev.name, kind=ev.kind.name, state=ev.state)

    def _call_loop(self, adev) -> None:
        """$AXT_CALL_LOOP: back-to-back SET_MAC calls until a LINK_CHANGE arrives (at most
        that many): async events must not starve behind a loop of sync calls."""
        seen, calls = self.links_seen, 0
        log("calls-start", dev=adev.name)
        while self.links_seen == seen and calls < self.call_loop:
            adev.call(Event.SET_MAC, SetMac(addr=bytes((2, 0, 0, 0, 0, calls % 250))))
            calls += 1
        log("calls-end", dev=adev.name, calls=calls, saw_link=self.links_seen > seen)

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn) -> int:
        log("enter", ev="RESET_WARN", dev=adev.name, reset_type=warn.reset_type.name)
        if self.call_loop and warn.reset_type is ResetType.FUNC:
            self._call_loop(adev)
        if warn.reset_type is ResetType.DEV:
            time.sleep(self.slow)
        elif warn.reset_type is ResetType.GLOBAL:
            _pump_for(adev.rt, self.slow)
        while self.held:
            held = self.held.pop()
            refcount = held.put()
            log("put", dev=held.name, refcount=refcount)
        log("exit", ev="RESET_WARN", dev=adev.name)
        return 0


class RecB(Rec):
    """Rec under another driver name (a second driver in the same or another process)."""

    name = "tdrv_b"


class Nodev(Rec):
    """probe() returns -ENODEV: the match is rejected silently."""

    name = "t_nodev"

    def probe(self, adev):
        log("probe", dev=adev.name, driver=self.name)
        return -Errno.ENODEV


class Nomem(Rec):
    """probe() fails with -ENOMEM: reported (PROBE_FAILED), device left unbound."""

    name = "t_nomem"

    def probe(self, adev):
        log("probe", dev=adev.name, driver=self.name)
        return -Errno.ENOMEM


class Defer(Rec):
    """probe() returns -EPROBE_DEFER $AXT_DEFERS times per device (default 2), then binds."""

    name = "t_defer"

    def __init__(self):
        super().__init__()
        self.defers = int(os.environ.get("AXT_DEFERS", "2"))
        self.tries: dict[str, int] = {}

    def probe(self, adev):
        n = self.tries[adev.name] = self.tries.get(adev.name, 0) + 1
        if n <= self.defers:
            log("probe", dev=adev.name, driver=self.name, result="defer")
            return -Errno.EPROBE_DEFER
        return super().probe(adev)


class RecShutdown(Rec):
    """Rec with a shutdown() (bus shutdown) that it records."""

    name = "tdrv_sd"

    def shutdown(self, adev) -> None:
        log("shutdown", dev=adev.name, driver=self.name)


class SlowProbe(Rec):
    """probe() sleeps $AXT_PROBE_SLOW seconds (default 1): calls to the device meanwhile wait."""

    name = "t_slowprobe"

    def probe(self, adev):
        log("probe", dev=adev.name, driver=self.name)
        time.sleep(float(os.environ.get("AXT_PROBE_SLOW", "1")))
        log("probe-end", dev=adev.name, driver=self.name)
        return 0


class Needs(Rec):
    """probe() returns -EPROBE_DEFER until the device $AXT_NEEDS is bound in this process
    (an RDMA driver waiting for its netdev sibling)."""

    name = "t_needs"

    def probe(self, adev):
        need = os.environ.get("AXT_NEEDS", "")
        if not any(d.name == need for d in adev.rt.devices.values() if d is not adev):
            log("probe", dev=adev.name, driver=self.name, result="defer")
            return -Errno.EPROBE_DEFER
        return super().probe(adev)


class ResetOnly(AuxDriver):
    """Binds ``ixd.eth`` and declares only RESET_WARN (not LINK_CHANGE); its remove()
    logs what its runtime counted of async events."""

    name = "t_reset_only"
    id_table = ["ixd.eth"]

    def probe(self, adev):
        return 0

    def remove(self, adev) -> None:
        stats = adev.rt.stats
        log("remove-stats", dev=adev.name, unhandled=stats["async_unhandled"], delivered=stats["async_delivered"])

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn) -> int:
        log("RESET_WARN", dev=adev.name)
        return 0


def _ixd():
    from parent.ixd import Ixd
    return Ixd


class IxdCounting(_ixd()):
    """The reference ixd model, logging its runtime's replay counters at its PCI remove."""

    def remove(self) -> None:
        stats = self.rt.stats
        log("parent-stats", replayed=stats["state_replayed"], undeclared=stats["async_undeclared"])
        super().remove()


class WithIds(Rec):
    """id_table entries carry driver_data; probe(adev, id) logs the entry that matched."""

    name = "t_ids"

    def __init__(self):
        super().__init__()
        from child.runtime import AuxDeviceId
        self.id_table = [AuxDeviceId("tp.eth", {"queues": 4}), ("tp.rdma", "roce")]

    def probe(self, adev, id):
        log("probe", dev=adev.name, driver=self.name, id=id.name, driver_data=id.driver_data)
        return 0


class Finder(Rec):
    """Binds ``tp.rdma`` and, in probe(), finds its sibling ``tp.eth.0`` with
    auxiliary_find_device (a match callback), holding the reference until remove()."""

    name = "t_finder"

    def __init__(self):
        super().__init__()
        self.id_table = ["tp.rdma"]
        self.found = {}

    def probe(self, adev):
        want = adev.name.replace(".rdma.", ".eth.")
        dev = adev.rt.find_device(lambda info, data: info.name == data, want)
        none = adev.rt.find_device(match_name="tp.nothing")
        log("found", dev=adev.name, sibling=dev.name if dev else None, none=none)
        if dev is not None:
            self.found[adev.name] = dev
        return 0

    def remove(self, adev) -> None:
        dev = self.found.pop(adev.name, None)
        if dev is not None:
            log("put", dev=dev.name, refcount=dev.put())


class Eth(Rec):
    """A driver named ``eth`` in module $AXT_MODNAME: ``<modname>.eth`` on the bus."""

    name = "eth"

    def __init__(self):
        super().__init__()
        self.modname = os.environ.get("AXT_MODNAME", "")
