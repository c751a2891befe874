"""Emulated hardware behind a parent: plain state, changed only by the parent's handlers and FW events.

Each piece is its own module and, where it has states, a table like
``auxipc/broker/lifecycle.py`` (an illegal event raises an AuxError naming the state
and the event):

| module | what |
|---|---|
| ``link.py`` | link state machine: carrier, training, speed/duplex/autoneg |
| ``reset.py`` | reset state machine: FUNC/DEV/GLOBAL/FLR, -EBUSY while one runs, -EIO after a failed one |
| ``sched.py`` | Tx scheduling tree (port -> vport -> TC -> queue/qset) with capacities; queue id space |
| ``shaper.py`` | rate limiters on tree nodes (netshaper) |
| ``dcb.py`` | ETS / PFC state and its validation |
| ``filters.py`` | MAC and VLAN filter tables |
| ``mailbox.py`` | the FW mailbox: latency, timeouts, shutdown, a FW hang |
| ``caps.py`` | the capability set |

``HwConfig`` is the knobs, from a model's defaults overridden by the
``AUXIPC_HW`` environment variable: ``key=value`` pairs separated by commas,
e.g. ``AUXIPC_HW="mbx_latency=0.2,leaves_per_tc=4,fw_hang=1"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from proto.errno import AuxError, Errno

from .caps import CapSet
from .dcb import Dcb
from .filters import MacTable, VlanTable
from .link import Link
from .mailbox import Mailbox
from .reset import Reset
from .sched import QueueSpace, SchedTree

ENV = "AUXIPC_HW"


@dataclass(frozen=True)
class HwConfig:
    link_up: bool = True          # the link trains at init (Model B: the control plane brings it up later)
    link_flap: float = 0.0        # FW carrier flaps: period in seconds from the first bind (0: none)
    link_flaps: int = 1           # how many (0: forever)
    flap_down: float = 0.1        # seconds the carrier stays off in a flap
    autoneg_time: float = 0.05    # link training after a ksettings change
    mbx_latency: float = 0.001    # seconds the FW takes to answer a mailbox request
    mbx_timeout: float = 1.0      # seconds before a mailbox request is -ETIME
    fw_hang: bool = False         # the FW answers nothing (SIGUSR1 toggles it at run time)
    reset_fail: bool = False      # the next reset fails (the FW does not come back)
    reset_time: float = 0.0       # seconds the hardware stays in reset
    max_vports: int = 4
    leaves_per_tc: int = 16       # queues + qsets under one traffic class of a vport
    max_txq: int = 64
    max_rxq: int = 64
    max_tc: int = 8
    pfc_cap: int = 8
    mac_filters: int = 16
    vlan_filters: int = 64
    qinq: bool = False
    reset_max_txq: int = 0        # Tx queues the FW reports after a reset (0: unchanged)
    reset_max_rxq: int = 0
    lldp: float = 0.0             # ice: the FW LLDP agent reports the peer's DCB this long after a bind (0: never)
    report: bool = False          # publish each hardware change as a trace record (HW)

    @classmethod
    def parse(cls, text: str, base: "HwConfig | None" = None) -> "HwConfig":
        known = {f.name: f.type for f in fields(cls)}
        base = base or cls()
        changes = {}
        for item in filter(None, (x.strip() for x in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise AuxError(Errno.EINVAL, f"{ENV}: {item!r} is not key=value with a known key "
                               f"({', '.join(known)})")
            kind = type(getattr(base, key))
            try:
                if kind is bool:
                    if value.strip().lower() not in ("0", "1", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    changes[key] = value.strip().lower() in ("1", "true", "yes")
                else:
                    changes[key] = kind(value)
            except ValueError:
                raise AuxError(Errno.EINVAL, f"{ENV}: {key}={value!r} is not a {kind.__name__}") from None
        return replace(base, **changes)

    @classmethod
    def from_env(cls, **defaults) -> "HwConfig":
        return cls.parse(os.environ.get(ENV, ""), cls(**defaults))


class Hardware:
    """Everything behind one PCI function."""

    def __init__(self, who: str, cfg: HwConfig, speeds=(10_000, 25_000, 100_000), features=()):
        self.who, self.cfg = who, cfg
        feats = set(features) | ({"qinq"} if cfg.qinq else set())
        self.caps = CapSet(max_txq=cfg.max_txq, max_rxq=cfg.max_rxq, features=frozenset(feats))
        self.link = Link(who, speeds)
        self.reset = Reset(who)
        self.sched = SchedTree(who, cfg.max_vports, cfg.leaves_per_tc, cfg.max_tc)
        self.queues = QueueSpace(who, cfg.max_txq, cfg.max_rxq)
        self.dcb = Dcb(cfg.max_tc, cfg.pfc_cap)
        self.macs = MacTable(who, cfg.mac_filters)
        self.vlans = VlanTable(who, cfg.vlan_filters, qinq="qinq" in feats)
        self.mbx = Mailbox(who, cfg.mbx_latency, cfg.mbx_timeout)
        self.mbx.fw_hang = cfg.fw_hang
        self.reset_fail = cfg.reset_fail

    @property
    def port_bps(self) -> int:
        return self.link.max_speed * 1_000_000

    def release(self, owner: str) -> int:
        """A device went away (unbind, delete): free its leaves and queue ids."""
        self.queues.free(owner)
        return self.sched.release(owner)

    def wipe(self) -> int:
        """What a reset destroys: every queue, qset and shaper (DCB, filters and link are kept)."""
        self.queues.reset()
        return self.sched.reset()

    def describe(self) -> dict:
        return {"link": self.link.state.name, "reset": self.reset.describe(), "mailbox": self.mbx.state.name,
                "fw_hang": self.mbx.fw_hang, "dcb": self.dcb.describe(), "sched": self.sched.describe()}


__all__ = ["Hardware", "HwConfig", "ENV"]
