"""``idpf_eth``: the IDPF netdev driver bound to ``ixd.eth`` devices (Model A's child),
and ``idpf_prime``, IDPF' bound to ``idpf.eth`` devices (Model B's child).

Both are child/netdev.py's NetDriver: a netdev state per device (link, queues
configured through the parent's scheduling tree, QoS, FW events seen), queues
enabled through the parent after probe, then POST_CONFIG. RESET_WARN and
PREPARE_DETACH quiesce the queues before the handler returns (the parent
resets only after that).
"""

from __future__ import annotations

from .netdev import NetDriver


class IdpfEth(NetDriver):
    """Model A: IDPF bound to the foundational NIC's ``ixd.eth.N``."""

    name = "idpf_eth"
    id_table = ["ixd.eth"]


class IdpfPrime(NetDriver):
    """Model B: IDPF' bound to ``idpf.eth.N``, the aux device of the IPU's PCI owner (idpf).
    The same driver code: only the parent differs, and discovery says what it handles."""

    name = "idpf_prime"
    id_table = ["idpf.eth"]
