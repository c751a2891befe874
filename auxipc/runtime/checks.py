"""What a runtime tells a test about its own process: the contract bugs it sees
(``bug``: a sleep in atomic context, an atomic overrun, a handler that raised,
a failed probe, lost async events, a reference never put, a lock refused or
inverted), sent to the broker with where in the user's code; the references it
holds and where each was taken; and, asked by the broker (CTL ``inspect``), its
journal and its devices' ``data``.

A mixin of ``Runtime`` (peer.py): it uses the runtime's transport, stats, name
and task, and the hooks the parent and child runtimes give it (``device_data``,
``device_name``, ``handler_site``).
"""

from __future__ import annotations

import os
from collections import Counter

from auxipc.runtime import journal
from auxipc.runtime.seam import Transport
from auxipc.runtime.where import caller_site
from proto import envelope as E
from proto.events import Catalog


class Checks:
    # of the runtime (peer.py)
    role: str
    name: str
    inc: int
    catalog: Catalog
    stats: Counter
    tr: Transport
    ref_sites: dict[str, list[str]]
    task: str           # a property of the runtime: the task running now
    _connected: bool

    def inspect(self, last: int) -> dict:
        """What a test may read of this process through the bus (the broker's ``inspect``):
        the last ``last`` records of its journal and each of its devices' ``data``."""
        records = list(journal.recent)[-last:] if last > 0 else []
        return {"peer": f"{self.role} {self.name}#{self.inc}", "pid": os.getpid(),
                "records": journal.plain(records), "devices": journal.plain(self.device_data())}

    def device_data(self) -> dict:
        """Each device's ``data`` (the driver's or parent's private state), by device name."""
        return {}

    def handler_site(self, dev_id: int, code: int) -> str:
        """``file:line`` of the handler this process runs for event ``code`` on a device; ''."""
        return ""

    def device_name(self, dev_id: int) -> str:
        """The name of one of this process's devices ('' if it has none by that id)."""
        return ""

    def what_served(self, msg: E.Header) -> str:
        """A request this process serves, for a bug report: its event (or type) and device."""
        spec = self.catalog.get(getattr(msg, "ev", -1))
        dev = getattr(msg, "name", "") or (self.device_name(msg.dev) or f"device #{msg.dev}" if hasattr(msg, "dev")
                                           else "")
        return f"{spec.name if spec else msg.TYPE.name}{f' on {dev}' if dev else ''}"

    def got_ref(self, dev: str) -> None:
        """A reference to ``dev`` was taken (get_device, find_device): where, if never put."""
        self.ref_sites.setdefault(dev, []).append(caller_site())

    def put_ref(self, dev: str) -> None:
        sites = self.ref_sites.get(dev)
        if sites:
            sites.pop()

    def report_leaks(self) -> None:
        """On a clean stop, once every remove() has run: a reference still held is a get
        never put (the bus puts it for this process; the kernel would never release it)."""
        for dev, sites in self.ref_sites.items():
            if sites:
                self.bug("ref_leak", f"{self.role} {self.name} left holding {len(sites)} reference(s) to {dev}: "
                         "get_device() or find_device() without put_device()", sites[0], dev=dev, sites=list(sites))

    def bug(self, kind: str, message: str, where: str = "", **detail) -> None:
        """Tell the broker about a contract bug this process saw (a sleep in atomic context,
        a handler that raised, a failed probe, ...), with ``where`` in the user's code
        (``file:line``). Sent on the DEALER, so the broker has it before the answer this
        process sends next (the answer a test waits for): the broker keeps it among its
        ``bugs`` (control op), which the ``auxbus`` fixture checks at teardown."""
        self.stats[f"bug_{kind}"] += 1
        if not (self._connected and self.tr.up):
            return
        self.tr.send(E.encode(E.Uevent(seq=0, action="BUG", detail={
            "kind": kind, "message": message[:2000], "where": where, "task": self.task, **detail})))
