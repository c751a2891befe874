"""A user's own auxiliary driver, started by examples/test_example.py as
``auxbus.child("my_eth:LinkOnlyEth")`` (the test's directory is on PYTHONPATH).

It binds ``ixd.eth`` devices and handles only LINK_CHANGE: the bus negotiates
that at bind time, so anything else the parent sends it is -EOPNOTSUPP.
"""

from auxipc import AuxDriver, handler, journal
from proto.events import Event


class LinkOnlyEth(AuxDriver):
    name = "link_only_eth"
    id_table = ["ixd.eth"]

    def probe(self, adev):
        adev.data["link_up"] = None
        return 0

    @handler(Event.LINK_CHANGE)       # async: runs in the driver's process, must not block
    def link_change(self, adev, link):
        adev.data["link_up"] = link.up
        journal("link", up=link.up, speed_mbps=link.speed_mbps)   # what a test reads: auxbus.child(...).records
