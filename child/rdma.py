"""An RDMA auxiliary driver: irdma on ``ice.roce``/``ice.iwarp``, mlx5_ib on ``mlx5_core.rdma``.

With a parent that handles QSET_ADD (ice), it attaches one queue set per
traffic class to the parent's scheduling tree after probe and after each TC
change, and detaches them in remove(). RESET_WARN quiesces (QPs to error,
queue sets forgotten: the reset destroys them); BEFORE_TC_CHANGE suspends the
QPs, AFTER_TC_CHANGE brings the queue sets in line with the new TCs (from a
worker). CRIT_ERR is recorded. With mlx5 (no queue sets) only the lifecycle
and detach/attach (suspend/resume) apply.

Journal records: ``probe``, ``qsets`` (teids per TC, errors), ``reset``, ``tc``,
``crit_err``, ``op`` (a user request), ``remove``.
"""

from __future__ import annotations

from auxipc import AuxDeviceId, ChildDevice, handler
from proto.errno import AuxError
from proto.events import Event, QsetParams

from .reference import ReferenceDriver

QS_HANDLE_BASE = 0x100       # the qs_handle of TC n is QS_HANDLE_BASE + n


class Irdma(ReferenceDriver):
    name = "irdma"
    # One driver for both protocols: the entry that matched tells probe() which (driver_data).
    id_table = [AuxDeviceId("ice.roce", "roce"), AuxDeviceId("ice.iwarp", "iwarp")]
    CALL_TIMEOUT = 5.0

    def probe(self, adev: ChildDevice, id: AuxDeviceId | None = None) -> int:
        adev.data.update(qsets={}, num_tc=1, state="up", gen=0, crit_errs=0,
                         protocol=id.driver_data if id is not None else None)
        self.note(adev, "probe", protocol=adev.data["protocol"])
        adev.rt.call_later(0, lambda: self.sync_qsets(adev))
        return 0

    def remove(self, adev: ChildDevice) -> None:
        for tc in sorted(adev.data["qsets"]):
            self._del(adev, tc)
        adev.data["state"] = "removed"
        self.note(adev, "remove")

    # ---- queue sets ----

    def sync_qsets(self, adev: ChildDevice) -> None:
        """A worker: one queue set per enabled TC, none on the others."""
        if not adev.bound or not adev.supports(Event.QSET_ADD) or adev.data["state"] != "up":
            return
        gen, errors = adev.data["gen"], []
        for tc in sorted(t for t in adev.data["qsets"] if t >= adev.data["num_tc"]):
            self._del(adev, tc)
        for tc in range(adev.data["num_tc"]):
            if tc in adev.data["qsets"]:
                continue
            try:
                reply = adev.call(Event.QSET_ADD, QsetParams(vport_id=0, tc=tc, qs_handle=QS_HANDLE_BASE + tc),
                                  timeout=self.CALL_TIMEOUT)
            except AuxError as exc:
                errors.append(f"tc{tc}: {exc.name}")
                continue
            if adev.data["gen"] != gen:
                return            # a reset came meanwhile: the hardware forgot it anyway
            adev.data["qsets"][tc] = reply.teid
        self.note(adev, "qsets", teids={f"tc{tc}": teid for tc, teid in sorted(adev.data["qsets"].items())},
                  errors=errors)

    def _del(self, adev: ChildDevice, tc: int) -> None:
        teid = adev.data["qsets"].pop(tc)
        if not adev.supports(Event.QSET_DEL):
            return
        try:
            adev.call(Event.QSET_DEL, QsetParams(vport_id=0, tc=tc, qs_handle=QS_HANDLE_BASE + tc, teid=teid),
                      timeout=self.CALL_TIMEOUT)
        except AuxError as exc:
            self.note(adev, "qsets", error=f"QSET_DEL tc{tc} teid {teid}: {exc.name}")

    # ---- parent -> child ----

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev: ChildDevice, warn) -> int:
        adev.data["gen"] += 1
        adev.data["qsets"].clear()          # the reset destroys them; nothing to detach
        adev.data["state"] = "quiesced"
        self.note(adev, "reset", phase="warn", reset_type=warn.reset_type, state="quiesced")
        return 0

    @handler(Event.BEFORE_TC_CHANGE)
    def before_tc_change(self, adev: ChildDevice, _) -> int:
        adev.data["state"] = "tc-change"
        self.note(adev, "tc", phase="before", num_tc=adev.data["num_tc"])
        return 0

    @handler(Event.AFTER_TC_CHANGE)
    def after_tc_change(self, adev: ChildDevice, qos) -> int:
        adev.data.update(num_tc=qos.num_tc, state="up")
        self.note(adev, "tc", phase="after", num_tc=qos.num_tc, up2tc=qos.up2tc, rel_bw=qos.rel_bw[:qos.num_tc])
        adev.rt.call_later(0, lambda: self.sync_qsets(adev))
        return 0

    @handler(Event.CRIT_ERR)
    def crit_err(self, adev: ChildDevice, err) -> None:
        adev.data["crit_errs"] += 1
        self.note(adev, "crit_err", reg=f"{err.reg:#x}")

    @handler(Event.PREPARE_DETACH)
    def prepare_detach(self, adev: ChildDevice, req) -> int:
        adev.data["state"] = "quiesced"
        self.note(adev, "detach", reason=req.reason)
        return 0

    def suspend(self, adev: ChildDevice) -> int:
        adev.data["gen"] += 1
        adev.data["qsets"].clear()
        adev.data["state"] = "detached"
        self.note(adev, "detach", reason="suspend")
        return 0

    def resume(self, adev: ChildDevice) -> int:
        adev.data["state"] = "up"
        self.note(adev, "attach")
        adev.rt.call_later(0, lambda: self.sync_qsets(adev))
        return 0

    # ---- user space (rdma tools poking at queue sets) ----

    def user_request(self, adev: ChildDevice, spec, payload, timeout: float):
        out = self.forward(adev, spec, payload, timeout)
        if spec.code == Event.QSET_ADD:
            adev.data.setdefault("extra_qsets", {})[payload.qs_handle] = out.teid
        elif spec.code == Event.QSET_DEL:
            adev.data.setdefault("extra_qsets", {}).pop(payload.qs_handle, None)
        self.note(adev, "op", event=spec.name, errno=0, reply=out if spec.sync else None)
        return out


class Mlx5Ib(Irdma):
    """The same RDMA driver on mlx5's ``mlx5_core.rdma`` (no queue sets there: discovery says so)."""

    name = "mlx5_ib"
    id_table = ["mlx5_core.rdma"]
