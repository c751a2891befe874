"""The port's link, as the PHY and the FW report it.

    DOWN --carrier_on--> TRAINING --link_up--> UP
      ^                     |                   |
      +----carrier_off------+-----carrier_off---+
    configure (ethtool ksettings): DOWN stays DOWN; TRAINING and UP renegotiate (TRAINING)

Speed, duplex and autoneg are what the two ends agreed: with autoneg the
highest speed both support, without it the forced speed (which the partner
must support too, or the link never trains). Half duplex exists only at
<= 1 Gb/s. An illegal event (``link_up`` without carrier) raises
``IllegalTransition`` naming the state and the event.
"""

from __future__ import annotations

from enum import Enum

from auxipc import Machine
from proto.errno import AuxError, Errno
from proto.events import Duplex, LinkChange


class LinkState(Enum):
    DOWN = "down"
    TRAINING = "training"     # carrier seen, autoneg / link training running
    UP = "up"


LINK_TABLE = {
    LinkState.DOWN: {"carrier_on": LinkState.TRAINING, "configure": LinkState.DOWN},
    LinkState.TRAINING: {"link_up": LinkState.UP, "carrier_off": LinkState.DOWN, "configure": LinkState.TRAINING},
    LinkState.UP: {"carrier_off": LinkState.DOWN, "configure": LinkState.TRAINING},
}
LINK_ILLEGAL = {LinkState.DOWN: Errno.EINVAL, LinkState.TRAINING: Errno.EBUSY, LinkState.UP: Errno.EINVAL}


class Link:
    def __init__(self, who: str, speeds=(10_000, 25_000, 100_000), partner=None):
        self.m = Machine("link", who, LINK_TABLE, LinkState.DOWN, LINK_ILLEGAL)
        self.supported = tuple(sorted(speeds))
        self.partner = tuple(sorted(partner or speeds))   # what the far end advertises
        self.autoneg = True
        self.forced = -1           # the speed ethtool forced (autoneg off)
        self.duplex = Duplex.FULL
        self.speed = -1            # the speed the link trained at (-1 while not up)
        self.flaps = 0

    @property
    def state(self) -> LinkState:
        return self.m.state

    @property
    def up(self) -> bool:
        return self.m.state is LinkState.UP

    @property
    def max_speed(self) -> int:
        return self.supported[-1]

    def status(self) -> LinkChange:
        if not self.up:
            return LinkChange(up=False, speed_mbps=-1, duplex=Duplex.UNKNOWN, autoneg=self.autoneg)
        return LinkChange(up=True, speed_mbps=self.speed, duplex=self.duplex, autoneg=self.autoneg)

    # ---- the PHY ----

    def carrier_on(self) -> None:
        self.m.fire("carrier_on")

    def carrier_off(self) -> None:
        self.m.fire("carrier_off")
        self.speed = -1
        self.flaps += 1

    def train(self) -> bool:
        """Finish training: True when the link came up (False: no carrier or no common speed)."""
        if self.state is not LinkState.TRAINING:
            return self.up
        if self.autoneg:
            common = set(self.supported) & set(self.partner)
            if not common:
                return False
            speed = max(common)
        else:
            if self.forced not in self.partner:
                return False
            speed = self.forced
        self.m.fire("link_up")
        self.speed = speed
        return True

    def bring_up(self) -> bool:
        """Carrier on and train, as the FW does at init or after a flap."""
        if self.state is LinkState.DOWN:
            self.carrier_on()
        return self.train() if self.state is LinkState.TRAINING else self.up

    # ---- ethtool ----

    def check(self, speed_mbps: int, duplex: Duplex, autoneg: bool) -> None:
        """SET_LINK_KSETTINGS: -EINVAL for what the port cannot do."""
        if not autoneg and speed_mbps == -1:
            raise AuxError(Errno.EINVAL, "$.payload.speed_mbps: a speed is needed with autoneg off")
        if speed_mbps != -1 and speed_mbps not in self.supported:
            raise AuxError(Errno.EINVAL, f"$.payload.speed_mbps: {speed_mbps} Mb/s is not supported by this port "
                           f"({', '.join(map(str, self.supported))})")
        if duplex is Duplex.HALF and (speed_mbps == -1 or speed_mbps > 1000):
            raise AuxError(Errno.EINVAL, "$.payload.duplex: half duplex exists only at 1000 Mb/s and below")

    def configure(self, speed_mbps: int, duplex: Duplex, autoneg: bool) -> None:
        """SET_LINK_KSETTINGS: validate, then renegotiate (the caller trains again)."""
        self.check(speed_mbps, duplex, autoneg)
        self.m.fire("configure")
        self.autoneg = autoneg
        self.forced = speed_mbps if not autoneg else -1
        self.duplex = Duplex.FULL if duplex is Duplex.UNKNOWN else duplex
        if self.state is LinkState.TRAINING:
            self.speed = -1
