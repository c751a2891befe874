"""MAC and VLAN filter tables (the switch's lookup entries, per function).

MAC: a fixed number of slots shared by the primary address (SET_MAC), unicast
and multicast filters (MAC_FILTER). A duplicate add is -EEXIST, deleting a
missing entry -ENOENT, a full table -ENOSPC. The primary replaces the
previous primary in place; an address already filtered becomes the primary in
its own slot. Multicast or zero addresses cannot be the primary (-EINVAL).

VLAN: ids 1..4095 per TPID; 802.1ad (0x88a8) needs the QinQ capability
(-EOPNOTSUPP without it). VID 0 is always accepted (priority tagging) and takes no slot.
"""

from __future__ import annotations

from proto.errno import AuxError, Errno
from proto.events import MacKind


def mac_str(addr: bytes) -> str:
    return ":".join(f"{b:02x}" for b in addr)


class MacTable:
    def __init__(self, who: str, size: int = 16):
        self.who, self.size = who, size
        self.slots: dict[int, tuple[bytes, str]] = {}    # slot -> (addr, 'primary' | 'unicast' | 'multicast')

    def _slot_of(self, addr: bytes) -> int | None:
        return next((s for s, (a, _) in self.slots.items() if a == addr), None)

    def _free_slot(self) -> int:
        slot = next((i for i in range(self.size) if i not in self.slots), None)
        if slot is None:
            raise AuxError(Errno.ENOSPC, f"{self.who}'s MAC filter table is full ({self.size} entries)")
        return slot

    @property
    def primary(self) -> bytes | None:
        return next((a for a, kind in self.slots.values() if kind == "primary"), None)

    def set_primary(self, addr: bytes) -> int:
        if addr[0] & 1:
            raise AuxError(Errno.EINVAL, "$.payload.addr: a multicast address cannot be the primary MAC")
        if addr == bytes(6):
            raise AuxError(Errno.EINVAL, "$.payload.addr: the zero address is not valid")
        old = next((s for s, (_, kind) in self.slots.items() if kind == "primary"), None)
        slot = self._slot_of(addr)
        if slot is None:
            slot = old if old is not None else self._free_slot()
        elif old is not None and old != slot:
            del self.slots[old]
        self.slots[slot] = (addr, "primary")
        return slot

    def add(self, addr: bytes, kind: MacKind) -> int:
        if (kind is MacKind.MULTICAST) != bool(addr[0] & 1):
            raise AuxError(Errno.EINVAL, f"$.payload.addr: {mac_str(addr)} is not a {kind.name.lower()} address")
        if self._slot_of(addr) is not None:
            raise AuxError(Errno.EEXIST, f"{mac_str(addr)} is already in {self.who}'s MAC filter table")
        slot = self._free_slot()
        self.slots[slot] = (addr, kind.name.lower())
        return slot

    def delete(self, addr: bytes) -> int:
        slot = self._slot_of(addr)
        if slot is None or self.slots[slot][1] == "primary":
            raise AuxError(Errno.ENOENT, f"no {mac_str(addr)} filter in {self.who}'s MAC filter table")
        del self.slots[slot]
        return slot

    def clear(self) -> None:
        self.slots.clear()


class VlanTable:
    def __init__(self, who: str, size: int = 64, qinq: bool = False):
        self.who, self.size, self.qinq = who, size, qinq
        self.vids: set[tuple[int, int]] = set()

    def add(self, proto: int, vid: int) -> None:
        if proto == 0x88A8 and not self.qinq:
            raise AuxError(Errno.EOPNOTSUPP, "$.payload.proto: 802.1ad (0x88a8) needs QinQ, which this hardware "
                           "does not have")
        if vid == 0:
            return
        if (proto, vid) in self.vids:
            raise AuxError(Errno.EEXIST, f"VLAN {vid} ({proto:#06x}) is already filtered")
        if len(self.vids) >= self.size:
            raise AuxError(Errno.ENOSPC, f"{self.who}'s VLAN filter table is full ({self.size} entries)")
        self.vids.add((proto, vid))

    def delete(self, proto: int, vid: int) -> None:
        if vid == 0:
            return
        if (proto, vid) not in self.vids:
            raise AuxError(Errno.ENOENT, f"VLAN {vid} ({proto:#06x}) is not filtered")
        self.vids.discard((proto, vid))
