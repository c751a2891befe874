"""What every pattern's driver does in the scenario, whatever carries its events.

A user's request reaches the driver as PATTERN_STEP (the harness's control
channel): ``reset`` and ``dcb`` start in the driver (a reset request; a DCB
change from dcbnl, which holds rtnl around the driver's op), ``crash`` arms a
crash in the next reset warning, every other step is the parent's and is
passed on. The pattern subclass says how the driver reaches its parent
(``request_reset``, ``dcb_set``) and maps its own events onto ``quiesce``,
``resume``, ``on_link`` and ``on_tc``. Outcomes are ``PATTERN`` trace records.
"""

from __future__ import annotations

import os
import signal
import time

from auxipc import AuxDriver

CRASH_FLUSH = 0.02      # lets the I/O thread send the crash record before the process dies


class ScenarioDriver(AuxDriver):
    PATTERN = ""

    def __init__(self):
        self.crash_armed = False

    def report(self, adev, step: str, **fields) -> None:
        adev.rt.report("PATTERN", pattern=self.PATTERN, side="child", step=step, dev=adev.name, **fields)

    def probe(self, adev) -> int:
        adev.data.update(state="up", num_tc=1, link=None)
        self.setup(adev)
        cat = adev.rt.catalog
        self.report(adev, "bind", handles=sorted(cat.get(c).name for c in adev.parent_handles if cat.get(c)))
        return 0

    def setup(self, adev) -> None:
        """What the pattern's driver does at probe before it is ready (register with the parent)."""

    def user_request(self, adev, spec, payload, timeout: float):
        if spec.name != "PATTERN_STEP":
            return self.forward(adev, spec, payload, timeout)
        step = payload.step
        if step == "reset":
            return spec.reply(ret=self.request_reset(adev))
        if step == "dcb":
            with adev.rt.lock("rtnl"):        # dcbnl holds rtnl around ieee_setets
                return spec.reply(ret=self.dcb_set(adev, payload.n or 2))
        if step == "crash":
            self.crash_armed = True
            return spec.reply(ret=self.request_reset(adev))
        return adev.call(spec, payload, timeout)

    def forward(self, adev, spec, payload, timeout: float):
        return adev.call(spec, payload, timeout) if spec.sync else adev.notify(spec, payload)

    # ---- what the patterns' events map onto ----

    def quiesce(self, adev) -> None:
        if self.crash_armed:
            # A bug in the driver's reset path: the process dies in the middle of the call.
            t_kill = time.monotonic() + CRASH_FLUSH
            self.report(adev, "crash", t_kill=t_kill)
            time.sleep(max(0.0, t_kill - time.monotonic()))
            os.kill(os.getpid(), signal.SIGKILL)
        adev.data["state"] = "quiesced"
        self.report(adev, "quiesce")

    def resume(self, adev) -> None:
        adev.data["state"] = "up"
        self.report(adev, "resume")

    def on_link(self, adev, up: bool, speed: int) -> None:
        adev.data["link"] = (up, speed)
        self.report(adev, "link", up=bool(up), speed=speed, atomic=adev.rt.atomic_context() is not None)

    def on_tc(self, adev, phase: str, num_tc: int | None = None) -> None:
        if adev.data.get("tc_phase") == phase and num_tc is None:
            return                # a repeat (the per-call cost loop): nothing new to report
        adev.data["tc_phase"] = phase
        if num_tc is not None:
            adev.data["num_tc"] = num_tc
        self.report(adev, "tc", phase=phase, num_tc=adev.data["num_tc"])

    def request_reset(self, adev) -> int:
        raise NotImplementedError

    def dcb_set(self, adev, num_tc: int) -> int:
        raise NotImplementedError
