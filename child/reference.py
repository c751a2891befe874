"""What the reference drivers (netdev, RDMA, vnet) share: a journal of what they
did, and the forwarding of a user-space request to the parent."""

from __future__ import annotations

import logging

from auxipc import AuxDriver, ChildDevice, journal
from proto.errno import AuxError, Errno

log = logging.getLogger("auxipc.child")


class ReferenceDriver(AuxDriver):
    def note(self, adev: ChildDevice, what: str, **fields) -> None:
        journal(what, dev=adev.name, driver=self.name, **fields)
        log.info("%s: %s %s", adev.name, what, " ".join(f"{k}={v}" for k, v in fields.items()))

    def forward(self, adev: ChildDevice, spec, payload, timeout: float):
        """Send a user-space request on to the parent as the driver's op would: refused
        from discovery without asking when the parent has no handler; failures journaled.
        rtnl events (DCB_CONFIG, SET_MAC, ...) run under rtnl: the broker takes it."""
        try:
            if not adev.supports(spec.code):
                raise AuxError(Errno.EOPNOTSUPP, f"parent of {adev.name} does not handle {spec.name}")
            return adev.call(spec, payload, timeout) if spec.sync else adev.notify(spec, payload)
        except AuxError as exc:
            self.note(adev, "op", event=spec.name, errno=exc.name, message=exc.message)
            raise
