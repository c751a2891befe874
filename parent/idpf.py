"""Model B's parent: ``idpf``, the PCI owner on an IPU, which adds ``idpf.eth.N`` for IDPF'.

The same contract as Model A with a different parent behind it. The
function's resources belong to the IPU's control plane, reached over a slow
mailbox (virtchnl, 20 ms per request here): queues are configured and enabled
through it, the vport's link comes up only once the child has configured it
(POST_CONFIG), and DCB is the control plane's business, so this parent does not
handle DCB_CONFIG (the child learns it from discovery: -EOPNOTSUPP) nor RDMA
queue sets. A reset keeps the device bound: RESET_WARN, the reset, CAPS_CHANGE
when the control plane hands out other resources afterwards, then
RESET_COMPLETE{status} (the idpf PCI/eth split RFC's RESET_INITIATED /
RESET_COMPLETE), instead of Model A's unplug + replug.
"""

from __future__ import annotations

from auxipc import handler
from proto.events import Event, ResetType

from .nic import NicParent


class Idpf(NicParent):
    modname = "idpf"
    KINDS = ("eth",)
    RESET_STYLE = "complete"
    SPEEDS = (25_000, 100_000, 200_000)
    FEATURES = ()
    HW_DEFAULTS = dict(link_up=False, mbx_latency=0.02, max_txq=16, max_rxq=16)
    CP_LINK_DELAY = 0.02     # the control plane reports the vport's link this long after POST_CONFIG

    dcb_config = None        # handlers this parent does not have (discovery tells the child)
    qset_add = None
    qset_del = None

    @handler(Event.POST_CONFIG)
    def post_config_done(self, adev, cfg) -> None:
        super().post_config_done(adev, cfg)
        if not self.hw.link.up and not self.hw.reset.running:
            self.rt.call_later(self.CP_LINK_DELAY, self._vport_link_up)

    def _vport_link_up(self) -> None:
        if not self.hw.link.up and not self.hw.reset.running and self.hw.link.bring_up():
            self.link_changed()

    def _reset_warn(self, kind: ResetType):
        if self.hw.link.up:               # the vport goes down with the reset
            self.hw.link.carrier_off()
            self.link_changed()
        return super()._reset_warn(kind)
