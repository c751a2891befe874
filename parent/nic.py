"""A PCI-owner parent with emulated hardware behind it: the base of ixd, idpf, mlx5 and ice.

What differs between the parents is declared, not coded: their aux devices
(``KINDS``), how a reset reaches the children (``RESET_STYLE``), link speeds,
features and hardware defaults, and which events they handle (a subclass sets
a handler to ``None`` to drop it: discovery then tells the children).

Reset styles, all driven by the reset state machine (parent/hw/reset.py):
- ``replug`` (ixd, ice): RESET_WARN to each child (it quiesces before replying),
  delete + uninit every device, reset the hardware, add them again (re-probe);
- ``complete`` (idpf, Model B): RESET_WARN, reset, CAPS_CHANGE if the FW reports
  other resources, then RESET_COMPLETE{status}; the children stay bound;
- ``detach`` (mlx5): suspend() every child (mlx5's detach), reset, resume() (attach).
A request returns at once and the reset runs from a worker; a request also
shuts the FW mailbox down at once, so a request waiting on it fails -ENXIO.

Hardware events: the FW's link flaps (``link_flap`` in $AUXIPC_HW, or SIGUSR2
for one flap now) go to the children as LINK_CHANGE; SIGUSR1 toggles a FW hang
(mailbox requests then time out -ETIME, and the children get a health event).
Every change is journalled (auxipc/runtime/journal.py) and, with ``report=1``, published
as a trace record ``HW <what>``.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Callable

from auxipc import ParentDevice, ParentModel, journal, plain
from proto.errno import AuxError, Errno
from proto.events import (
    DcbConfig,
    DetachReason,
    Ets,
    Event,
    FwEvent,
    FwEventKind,
    Pfc,
    PrepareDetach,
    ResetComplete,
    ResetType,
    ResetWarn,
    Tsa,
)

from .hw import Hardware, HwConfig
from .hw.reset import HW_NAME, ResetState
from .nic_ops import NicHandlers

log = logging.getLogger("auxipc.nic")

LINK_KINDS = ("eth", "vnet")   # devices that carry a netdev and get LINK_CHANGE


class NicParent(NicHandlers, ParentModel):
    modname = ""
    KINDS: tuple[str, ...] = ("eth",)
    RESET_STYLE = "replug"
    SPEEDS = (10_000, 25_000, 100_000)
    FEATURES: tuple[str, ...] = ("dcb",)
    HW_DEFAULTS: dict = {}
    CALL_TIMEOUT = 2.0     # seconds for a P->C sync event from a worker

    def __init__(self, devices: int = 1):
        super().__init__()
        self.count = devices
        self.cfg = HwConfig.from_env(**self.HW_DEFAULTS)
        self.hw = Hardware(self.modname, self.cfg, self.SPEEDS, self.FEATURES)
        self.released: list[str] = []
        self.post_config: dict[str, object] = {}
        self._flaps = 0
        self._flapping = False

    # ---- the PCI probe and remove ----

    def device_specs(self) -> list[tuple[str, int]]:
        # Ids from this instance's index, as drivers number a PCI function's devices from
        # an IDA: a second instance of the model adds ixd.eth.1 (or ixd.eth.N..2N-1).
        base = self.index * self.count
        return [(kind, base + i) for i in range(self.count) for kind in self.KINDS]

    def probe(self) -> None:
        self.hw.mbx.m.fire("init")          # the FW is up when the driver loads
        if self.cfg.link_up:
            self.hw.link.bring_up()
        c = self.cfg
        self.note("probe", link=self.hw.link.status().speed_mbps if self.hw.link.up else "down", max_tc=c.max_tc,
                  leaves_per_tc=c.leaves_per_tc, max_txq=c.max_txq, mbx_ms=c.mbx_latency * 1000)
        for name, i in self.device_specs():
            self.plug(name, i)
        try:
            signal.signal(signal.SIGUSR1, lambda *_: self.rt.call_soon_threadsafe(self.toggle_fw_hang))
            signal.signal(signal.SIGUSR2, lambda *_: self.rt.call_soon_threadsafe(self.flap))
        except ValueError:       # not the main thread (a model run in-process)
            pass

    def remove(self) -> None:
        for adev in list(self.rt.devices.values()):
            if adev.state == "added" and adev.bound and adev.supports(Event.PREPARE_DETACH):
                try:
                    adev.call(Event.PREPARE_DETACH, PrepareDetach(reason=DetachReason.UNLOAD), timeout=1.0)
                except AuxError as exc:
                    log.warning("PREPARE_DETACH %s: %s", adev.name, exc)
        for adev in list(self.rt.devices.values()):
            self.unpublish(adev)
        super().remove()

    def plug(self, name: str, i: int) -> ParentDevice:
        adev = self.device(name, i, release=self.release)
        adev.init()
        if name in LINK_KINDS:
            self.send_link(adev)            # kept for the driver that binds (state replay)
        self.publish(adev)
        try:
            driver = adev.add()
        except AuxError:
            self.unpublish(adev)
            adev.uninit()                   # a failed add still needs uninit
            raise
        self.note("plug", dev=adev.name, driver=driver)
        return adev

    def publish(self, adev: ParentDevice) -> None:
        """Make an initialized device known to the rest of the driver (before add, as ice
        sets pf->adev); a model with a lock for it overrides this (ice.py)."""

    def unpublish(self, adev: ParentDevice) -> None:
        """Forget a device before deleting it (see ``publish``)."""

    def unplug(self, adev: ParentDevice) -> None:
        self.unpublish(adev)
        if adev.state == "added":
            adev.delete()
        if adev.state in ("initialized", "deleted"):
            adev.uninit()
        self.hw.release(adev.name)
        self.note("unplug", dev=adev.name)

    def release(self, adev: ParentDevice) -> None:
        self.released.append(adev.name)
        log.info("release(%s): last reference put", adev.name)

    def on_bind(self, adev: ParentDevice) -> None:
        if self.cfg.link_flap > 0 and not self._flapping:
            self._flapping = True      # the FW's flaps start with the first driver (deterministic tests)
            self.rt.call_later(self.cfg.link_flap, lambda: self.flap(again=True))
        if self.hw.dcb.num_tc > 1 and adev.supports(Event.AFTER_TC_CHANGE):
            # A driver binding late learns the current QoS layout (ice hands it over at plug).
            self.rt.call_later(0, lambda: self._call(adev, Event.AFTER_TC_CHANGE, self.hw.dcb.qos()))
        if self.cfg.lldp > 0 and self.hw.dcb.changes == 0:
            self.rt.call_later(self.cfg.lldp, self.lldp_change)

    def on_unbind(self, adev: ParentDevice, reason: str) -> None:
        n = self.hw.release(adev.name)
        if n:
            self.note("sched", dev=adev.name, released=n, tree=self.hw.sched.describe())

    def bound(self, kinds=None) -> list[ParentDevice]:
        return [d for d in self.rt.devices.values()
                if d.state == "added" and d.bound and (kinds is None or d.short in kinds)]

    # ---- journal ----

    def note(self, what: str, **fields) -> None:
        journal(what, **fields)
        log.info("%s %s", what, " ".join(f"{k}={v}" for k, v in plain(fields).items()))
        if self.cfg.report:
            self.rt.report(f"HW {what}", what=what, **plain(fields))

    # ---- the FW mailbox ----

    def mbx(self, op: str, timeout: float | None = None) -> None:
        """Send ``op`` and wait for the FW, serving other requests meanwhile (a kernel thread
        sleeping on a completion). -ETIME, -ENXIO as the mailbox says."""
        self.rt.might_sleep(f"FW mailbox {op}")
        mbx = self.hw.mbx
        xn = mbx.send(op, time.monotonic(), timeout)
        journal("mbx", op=op, xn=xn.id, answer_in=None if xn.due is None else round(xn.due - xn.sent, 6))
        while not mbx.poll(xn, time.monotonic()):
            self.rt.pump(max(xn.wake_in(time.monotonic()), 0.0002))

    def mbx_later(self, op: str, done: Callable[[AuxError | None], None]) -> None:
        """Send ``op`` without waiting (atomic context): ``done(error)`` runs from a worker
        once the FW answered, timed out or the mailbox was shut down."""
        mbx = self.hw.mbx
        try:
            xn = mbx.send(op, time.monotonic())
        except AuxError as exc:
            self.rt.call_later(0, lambda err=exc: done(err))
            return

        def check():
            try:
                if not mbx.poll(xn, time.monotonic()):
                    self.rt.call_later(max(xn.wake_in(time.monotonic()), 0.0002), check)
                    return
            except AuxError as exc:
                done(exc)
                return
            done(None)
        self.rt.call_later(xn.wake_in(time.monotonic()), check)

    def toggle_fw_hang(self) -> None:
        self.hw.mbx.fw_hang = not self.hw.mbx.fw_hang
        self.note("fw", hang=self.hw.mbx.fw_hang)
        self.fw_health(self.hw.mbx.fw_hang)

    def fw_health(self, hung: bool) -> None:
        """Tell the children the FW's health changed (FW_EVENT HEALTH; ice overrides: CRIT_ERR)."""
        for adev in self.bound():
            if adev.supports(Event.FW_EVENT):
                adev.notify(Event.FW_EVENT, FwEvent(kind=FwEventKind.HEALTH, state=1 if hung else 0))

    # ---- link ----

    def send_link(self, adev: ParentDevice) -> None:
        try:
            adev.notify(Event.LINK_CHANGE, self.hw.link.status())
        except AuxError:
            pass            # unbound (kept for its driver) or no handler

    def link_changed(self) -> None:
        status = self.hw.link.status()
        self.note("link", up=status.up, speed_mbps=status.speed_mbps, state=self.hw.link.state.name)
        for adev in list(self.rt.devices.values()):
            if adev.state == "added" and adev.short in LINK_KINDS:
                self.send_link(adev)

    def retrain(self) -> None:
        if self.hw.link.train():
            self.link_changed()

    def flap(self, again: bool = False) -> None:
        """The FW reports a carrier loss; the carrier comes back ``flap_down`` seconds later."""
        if not self.hw.link.up:
            return
        self.hw.link.carrier_off()
        self.link_changed()
        self._flaps += 1
        more = again and (self.cfg.link_flaps == 0 or self._flaps < self.cfg.link_flaps)
        self.rt.call_later(self.cfg.flap_down, lambda: self._carrier_back(more))

    def _carrier_back(self, again: bool) -> None:
        self.hw.link.bring_up()
        self.link_changed()
        if again:
            self.rt.call_later(self.cfg.link_flap, lambda: self.flap(again=True))

    # ---- reset ----

    def start_reset(self, kind: ResetType, from_child: bool = True, by: str = "") -> None:
        """Accept a reset (-EINVAL/-EBUSY/-EIO otherwise); it runs from a worker."""
        self.hw.reset.request(kind, from_child)
        aborted = self.hw.mbx.shutdown(f"{kind.name} reset in progress")
        self.note("reset", state="PENDING", kind=kind, hw=HW_NAME[kind], by=by, aborted=aborted)
        self.rt.call_later(0, lambda: self._reset(kind))

    def check_not_resetting(self) -> None:
        """Configuration is refused while the hardware is going down or in reset."""
        r = self.hw.reset
        if r.state is ResetState.FAILED:
            raise AuxError(Errno.EIO, f"{self.modname} failed its last reset ({r.error})")
        if r.state in (ResetState.PENDING, ResetState.WARNING, ResetState.RESETTING):
            raise AuxError(Errno.EBUSY, f"a {r.kind.name} reset is running (state {r.state.name})")

    def _reset(self, kind: ResetType) -> None:
        r = self.hw.reset
        try:
            r.warn()
            self.note("reset", state="WARNING", kind=kind)
            plugged = self._reset_warn(kind)
            r.quiesced()
            wiped = self.hw.wipe()
            self.note("reset", state="RESETTING", kind=kind, wiped=wiped)
            if self.cfg.reset_time > 0:
                self._wait(self.cfg.reset_time)
            if self.hw.reset_fail:
                self.hw.reset_fail = False
                raise AuxError(Errno.EIO, f"the FW did not come back from the {HW_NAME[kind]}")
            self.mbx("INIT")
            r.reset_done()
            self.note("reset", state="REBUILDING", kind=kind)
            self._rebuild(kind, plugged)
            r.rebuilt()
            self.note("reset", state="IDLE", kind=kind, count=r.count)
        except AuxError as exc:
            if r.running:
                r.fail(exc.message)
            self.note("reset", state="FAILED", kind=kind, error=exc.name, message=exc.message)
            self._reset_failed(kind, exc)

    def _reset_warn(self, kind: ResetType) -> list[tuple[str, int]]:
        if self.RESET_STYLE == "detach":
            for adev in self.bound():
                self._pm(adev, "suspend")
            return []
        for adev in self.bound():
            if adev.supports(Event.RESET_WARN):
                self._call(adev, Event.RESET_WARN, ResetWarn(reset_type=kind))
        if self.RESET_STYLE != "replug":
            return []
        plugged = [(d.short, d.id) for d in self.rt.devices.values() if d.state == "added"]
        for adev in [d for d in list(self.rt.devices.values()) if d.state == "added"]:
            self.unplug(adev)
        return plugged

    def _rebuild(self, kind: ResetType, plugged: list[tuple[str, int]]) -> None:
        if self.RESET_STYLE == "replug":
            for name, i in plugged:
                self.plug(name, i)
        elif self.RESET_STYLE == "detach":
            for adev in self.bound():
                self._pm(adev, "resume")
        else:
            self._caps_after_reset()
            for adev in self.bound():
                if adev.supports(Event.RESET_COMPLETE):
                    adev.notify(Event.RESET_COMPLETE, ResetComplete(reset_type=kind, status=0))

    def _reset_failed(self, kind: ResetType, exc: AuxError) -> None:
        if self.RESET_STYLE == "complete":
            for adev in self.bound():
                if adev.supports(Event.RESET_COMPLETE):
                    adev.notify(Event.RESET_COMPLETE, ResetComplete(reset_type=kind, status=-Errno.EIO))

    def _caps_after_reset(self) -> None:
        caps = self.hw.caps.after_reset(self.cfg.reset_max_txq, self.cfg.reset_max_rxq)
        if caps == self.hw.caps:
            return
        self.hw.caps = caps
        self.hw.queues.max_txq, self.hw.queues.max_rxq = caps.max_txq, caps.max_rxq
        self.note("caps", max_txq=caps.max_txq, max_rxq=caps.max_rxq)
        for adev in self.bound():
            if adev.supports(Event.CAPS_CHANGE):
                self._call(adev, Event.CAPS_CHANGE, caps.payload())

    def _call(self, adev: ParentDevice, event, payload=None) -> None:
        """A P->C sync event from a worker; failures are logged (the kernel goes on)."""
        if not adev.bound:
            return
        try:
            adev.call(event, payload, timeout=self.CALL_TIMEOUT)
        except AuxError as exc:
            self.note("child_error", dev=adev.name, event=Event(event).name, error=exc.name, message=exc.message)

    def _pm(self, adev: ParentDevice, op: str) -> None:
        try:
            getattr(adev, op)()
        except AuxError as exc:
            self.note("child_error", dev=adev.name, event=op, error=exc.name, message=exc.message)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.rt.pump(left)

    # ---- traffic classes ----

    def tc_change(self) -> None:
        """Worker: BEFORE_TC_CHANGE to every bound child, re-shape the tree, AFTER_TC_CHANGE
        with the new QoS. Never from the DCB handler itself: it holds rtnl, and the children's
        device_lock must not be taken under rtnl."""
        targets = self.bound()
        for adev in targets:
            if adev.supports(Event.BEFORE_TC_CHANGE):
                self._call(adev, Event.BEFORE_TC_CHANGE)
        dcb = self.hw.dcb
        try:
            moved = self.hw.sched.set_num_tc(dcb.num_tc, weights=dcb.cfg.ets.tc_tx_bw)
            self.note("sched", num_tc=dcb.num_tc, moved=len(moved), tree=self.hw.sched.describe())
        except AuxError as exc:
            self.note("sched", num_tc=dcb.num_tc, error=exc.name, message=exc.message)
        qos = dcb.qos()
        for adev in targets:
            if adev.supports(Event.AFTER_TC_CHANGE):
                self._call(adev, Event.AFTER_TC_CHANGE, qos)
        self.note("tc_change", num_tc=qos.num_tc, to=[d.name for d in targets])

    def lldp_change(self) -> None:
        """ice's FW LLDP agent: the link partner's DCB config (willing mode) is programmed."""
        both = (50, 50, 0, 0, 0, 0, 0, 0)
        cfg = DcbConfig(ets=Ets(willing=True, tc_tx_bw=both, tc_rx_bw=both, tc_tsa=(Tsa.ETS,) * 8,
                                prio_tc=(0, 0, 0, 1, 0, 0, 0, 0)), pfc=Pfc(pfc_en=0x08))
        if self.hw.reset.running or cfg == self.hw.dcb.cfg:
            return
        self.hw.sched.check_num_tc(self.hw.dcb.check(cfg))
        self.hw.dcb.apply(cfg)
        self.note("dcb", changed=True, by="FW LLDP agent", **self.hw.dcb.describe())
        self.tc_change()
