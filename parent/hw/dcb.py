"""DCB state: ETS (priority -> TC map, per-TC bandwidth and TSA) and PFC (ieee_ets, ieee_pfc).

``check`` validates a DCBNL request the way ice_dcbnl_setets / ice_dcb_bwchk
do, all -EINVAL naming the field:
- the TCs the priorities map to are contiguous from 0 and no more than the
  hardware has (``max_tc``);
- Tx bandwidth sums to 100 and a TC no priority maps to gets 0 %;
- the TSA is STRICT or ETS (CB_SHAPER and VENDOR are not in this hardware);
- PFC on at most ``pfc_cap`` priorities.
``apply`` programs it and says whether anything changed: an identical config is
no change (no TC change events), as ice's ICE_DCB_NO_HW_CHG.
"""

from __future__ import annotations

from proto.errno import AuxError, Errno
from proto.events import DcbConfig, Ets, Pfc, PfcMode, Qos, Tsa

DEFAULT = DcbConfig(ets=Ets(willing=False, tc_tx_bw=(100, 0, 0, 0, 0, 0, 0, 0), tc_rx_bw=(100, 0, 0, 0, 0, 0, 0, 0),
                            tc_tsa=(Tsa.ETS,) * 8, prio_tc=(0,) * 8), pfc=Pfc())


class Dcb:
    def __init__(self, max_tc: int = 8, pfc_cap: int = 8):
        self.max_tc, self.pfc_cap = max_tc, pfc_cap
        self.cfg: DcbConfig = DEFAULT
        self.changes = 0

    @property
    def num_tc(self) -> int:
        return max(self.cfg.ets.prio_tc) + 1

    def check(self, cfg: DcbConfig) -> int:
        """Validate ``cfg``; returns its number of traffic classes."""
        ets = cfg.ets
        used = sorted(set(ets.prio_tc))
        num_tc = used[-1] + 1
        if used != list(range(num_tc)):
            raise AuxError(Errno.EINVAL, f"$.payload.ets.prio_tc: traffic classes must be contiguous from 0 "
                           f"(the priorities map to {', '.join(map(str, used))})")
        if num_tc > self.max_tc:
            raise AuxError(Errno.EINVAL, f"$.payload.ets.prio_tc: {num_tc} traffic classes; the hardware has "
                           f"{self.max_tc}")
        if sum(ets.tc_tx_bw) != 100:
            raise AuxError(Errno.EINVAL, f"$.payload.ets.tc_tx_bw: shares sum to {sum(ets.tc_tx_bw)}, not 100")
        for tc in range(num_tc, 8):
            if ets.tc_tx_bw[tc]:
                raise AuxError(Errno.EINVAL, f"$.payload.ets.tc_tx_bw[{tc}]: {ets.tc_tx_bw[tc]}% for traffic "
                               f"class {tc}, which no priority maps to")
        for tc in range(num_tc):
            if ets.tc_tsa[tc] not in (Tsa.STRICT, Tsa.ETS):
                raise AuxError(Errno.EINVAL, f"$.payload.ets.tc_tsa[{tc}]: {ets.tc_tsa[tc].name} is not supported "
                               "by this hardware (STRICT or ETS)")
        enabled = bin(cfg.pfc.pfc_en).count("1")
        if enabled > self.pfc_cap:
            raise AuxError(Errno.EINVAL, f"$.payload.pfc.pfc_en: PFC on {enabled} priorities; the hardware "
                           f"supports {self.pfc_cap}")
        return num_tc

    def apply(self, cfg: DcbConfig) -> bool:
        """Program ``cfg`` (validated first). True when the hardware changed."""
        self.check(cfg)
        if cfg == self.cfg:
            return False
        self.cfg = cfg
        self.changes += 1
        return True

    def qos(self) -> Qos:
        """The QoS layout the children learn from AFTER_TC_CHANGE (iidc_rdma_qos_params)."""
        ets = self.cfg.ets
        strict = all(ets.tc_tsa[tc] is Tsa.STRICT for tc in range(self.num_tc))
        return Qos(num_tc=self.num_tc, up2tc=tuple(ets.prio_tc), rel_bw=tuple(ets.tc_tx_bw),
                   prio_type=Tsa.STRICT if strict else Tsa.ETS, pfc_mode=PfcMode.VLAN)

    def describe(self) -> dict:
        ets = self.cfg.ets
        return {"num_tc": self.num_tc, "prio_tc": list(ets.prio_tc), "tc_tx_bw": list(ets.tc_tx_bw[:self.num_tc]),
                "pfc_en": f"{self.cfg.pfc.pfc_en:#04x}"}
