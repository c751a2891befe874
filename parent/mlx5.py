"""``mlx5_core``: an mlx5-like PCI owner with several aux devices of different kinds.

``mlx5_core.eth.N`` (mlx5e), ``mlx5_core.rdma.N`` (mlx5_ib), ``mlx5_core.vnet.N``
(mlx5_vdpa). FW events go to every child at once (mlx5's atomic notifier
chain: FW_EVENT and LINK_CHANGE are async, atomic-context events). A reset is
mlx5's detach/attach: every child's suspend() runs, the FW resets, then
resume(); there is no RESET_WARN. No RDMA queue sets (mlx5_ib does not use
them: discovery tells it) and no virtchnl; DCB, netshaper, queues, filters
and ethtool go to the FW command interface (2 ms per command here).
"""

from __future__ import annotations

from .nic import NicParent


class Mlx5Core(NicParent):
    modname = "mlx5_core"
    KINDS = ("eth", "rdma", "vnet")
    RESET_STYLE = "detach"
    SPEEDS = (25_000, 50_000, 100_000, 200_000, 400_000)
    FEATURES = ("dcb", "qinq")
    HW_DEFAULTS = dict(max_tc=8, pfc_cap=8, mbx_latency=0.002, qinq=True)

    qset_add = None
    qset_del = None
    virtchnl = None
