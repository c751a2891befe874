"""Model A's parent: ``ixd``, the foundational NIC that owns the PCI function and
adds ``ixd.eth.0`` for the IDPF netdev driver.

Reset behaviour follows ice_rdma_request_reset: FUNC and DEV are accepted and
the call returns at once (the reset runs afterwards, from the service task);
another request while one runs is -EBUSY, any request after a failed reset
-EIO, other types -EINVAL. The reset itself is the common unplug + replug:
RESET_WARN to the child (it quiesces before replying), delete, reset the
hardware, add the device again (the driver re-probes).

The hardware behind it (parent/hw/, knobs in $AUXIPC_HW): a 4-TC scheduler
with 16 leaves per TC, DCB with PFC on up to 4 priorities, MAC/VLAN filter
tables, a 4-speed port up at 100 Gb/s, a FW mailbox answering in 1 ms. It
handles every child->parent event of the catalog (parent/nic_ops.py): the
proposal's Model A, where the foundational NIC does it all for IDPF.
"""

from __future__ import annotations

from .nic import NicParent


class Ixd(NicParent):
    """``ixd.eth.0`` .. ``ixd.eth.N-1`` (``--devices N``), one per vport of the function."""

    modname = "ixd"
    KINDS = ("eth",)
    RESET_STYLE = "replug"
    SPEEDS = (10_000, 25_000, 50_000, 100_000)
    FEATURES = ("dcb",)
    HW_DEFAULTS = dict(max_tc=4, pfc_cap=4, mbx_latency=0.001)
