"""Drivers and a parent model with one contract bug each, for tests/test_fixture_*.py:
copied into the directory of a pytest those tests run (``pytester``), where the
``auxbus`` fixture must fail each inner test naming the bug's kind and the line
marked ``# BUG:<kind>`` here. ``Clean`` has none (a get it puts, a handler that
does not sleep): its test passes.
"""

import logging
import time

from auxipc import AuxDriver, ParentModel, handler
from auxipc.runtime.journal import journal
from proto.errno import AuxError, Errno
from proto.events import Event


class Base(AuxDriver):
    id_table = ["ixd.eth"]

    def probe(self, adev):
        adev.data["probed"] = True
        return 0


class SleepsInAtomic(Base):
    name = "sleeps_in_atomic"

    @handler(Event.LINK_CHANGE)
    def link(self, adev, link):
        try:
            adev.call(Event.SET_MAC, {"addr": "02:00:00:00:00:01"})   # BUG:sleep_in_atomic
        finally:
            journal("link", up=link.up)


class OverrunsAtomic(Base):
    name = "overruns_atomic"

    @handler(Event.LINK_CHANGE)
    def link(self, adev, link):   # BUG:atomic_overrun
        end = time.thread_time() + 0.02     # 20 ms on the CPU: busy, not preempted
        while time.thread_time() < end:
            pass
        journal("link", up=link.up)


class InvertsLocks(Base):
    name = "inverts_locks"

    def probe(self, adev):
        with adev.rt.lock("mutex:a"):
            with adev.rt.lock("mutex:b"):
                pass
        with adev.rt.lock("mutex:b"):
            with adev.rt.lock("mutex:a"):   # BUG:lock_inversion
                pass
        return 0


class Deadlocks(Base):
    name = "deadlocks"

    def probe(self, adev):
        with adev.rt.lock("mutex:a"):
            try:
                with adev.rt.lock("mutex:a"):   # BUG:deadlock
                    pass
            except AuxError as exc:
                adev.data["errno"] = exc.errno
        return 0


class Raises(Base):
    name = "raises"

    @handler(Event.POST_INIT)
    def post_init(self, adev, _):
        return {}["missing"]   # BUG:handler_exception


class FailsProbe(Base):
    name = "fails_probe"

    def probe(self, adev):   # BUG:probe_failed
        return -Errno.EIO


class LosesEvents(Base):
    name = "loses_events"

    @handler(Event.LINK_CHANGE)
    def link(self, adev, link):   # BUG:async_lost
        journal("link", speed=link.speed_mbps)


class LeaksRef(Base):
    name = "leaks_ref"

    def probe(self, adev):
        adev.get()   # BUG:ref_leak
        return 0


class KeepsFound(Base):
    name = "keeps_found"

    def probe(self, adev):
        adev.data["found"] = adev.rt.find_device(name=adev.name).name   # BUG:ref_leak_found
        return 0


class Clean(Base):
    name = "clean"

    def probe(self, adev):
        adev.get()
        adev.put()
        adev.data["probed"] = True
        logging.getLogger("clean").warning("probed %s", adev.name)    # in its process's log
        return 0

    @handler(Event.LINK_CHANGE)
    def link(self, adev, link):
        adev.data["up"] = link.up
        journal("link", up=link.up)

    def remove(self, adev):
        journal("remove", dev=adev.name)


class Leaky(ParentModel):
    modname = "lk"

    def probe(self):
        self.eth = self.device("eth", 0, release=lambda adev: None)
        self.eth.init()
        self.eth.add()

    def remove(self):   # BUG:devices_outlive_parent
        pass


class NoUninit(ParentModel):
    modname = "nu"

    def probe(self):
        self.eth = self.device("eth", 0, release=lambda adev: None)
        self.eth.init()
        self.eth.add()

    def remove(self):   # BUG:uninit_missing
        self.eth.delete()
