"""auxiliary_find_device() for a process: find a device on the bus and hold it.

The broker lists the devices still on the bus (DEV_FIND, in the order they were
added); the caller's match callback runs here, in its own process, on each; the
first it accepts is referenced with DEV_GET(added) — refused with -ENODEV if it
left the bus meanwhile, and the walk goes on. The caller owns the reference and
must ``put()`` it (``auxipc ls`` shows it among the device's holders).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from auxipc.runtime.host import Host
from proto import envelope as E
from proto.errno import AuxError, Errno


class DeviceInfo(NamedTuple):
    """What a match callback sees of a device (no reference held)."""
    dev_id: int
    name: str
    match: str           # the name a driver's id_table is compared with
    parent: str          # the parent peer's label
    driver: str | None   # the bound driver's name


class FoundDevice:
    """A device ``find_device`` returned, with a reference the caller must ``put()``."""

    def __init__(self, host: Host, info: DeviceInfo):
        self.host, self.info = host, info
        self.dev_id, self.name, self.match = info.dev_id, info.name, info.match
        self.held = True

    def put(self) -> int:
        """put_device: drop the reference find_device took; the remaining count."""
        if not self.held:
            raise AuxError(Errno.EINVAL, f"put_device: {self.name} was already put")
        result, _ = self.host.request(lambda r: E.DevPut(r=r, dev=self.dev_id), what="put_device")
        self.host.check(result, "put_device")
        self.held = False
        self.host.put_ref(self.name)
        return result.d["refcount"]

    def __repr__(self) -> str:
        return f"<FoundDevice {self.name} #{self.dev_id}{'' if self.held else ' (put)'}>"


def find_device(host: Host, match: Callable[[DeviceInfo, Any], bool] | None = None, data: Any = None, *,
                start: FoundDevice | None = None, name: str = "", match_name: str = "") -> FoundDevice | None:
    """auxiliary_find_device(start, data, match): the first device on the bus after
    ``start`` for which ``match(info, data)`` is true (and that has this full ``name`` /
    ``match_name``, if given), referenced; None if there is none."""
    result, _ = host.request(lambda r: E.DevFind(r=r, name=name, match=match_name), what="auxiliary_find_device")
    host.check(result, "auxiliary_find_device")
    infos = [DeviceInfo(d["dev"], d["name"], d["match"], d["parent"], d["driver"]) for d in result.d["devices"]]
    if start is not None:
        infos = [i for i in infos if i.dev_id > start.dev_id]
    for info in infos:
        if match is not None and not match(info, data):
            continue
        got, _ = host.request(lambda r, dev=info.dev_id: E.DevGet(r=r, dev=dev, added=True), what="get_device")
        if got.e == -Errno.ENODEV:
            continue        # it left the bus after the listing: bus_find_device would not see it
        host.check(got, "get_device")
        host.got_ref(info.name)
        return FoundDevice(host, info)
    return None
