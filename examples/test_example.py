"""Testing your own parent models and drivers across real processes with the
``auxbus`` fixture (installed with auxipc as a pytest plugin; needs the test
extra: ``pip install 'auxipc[pytest]'``). Copy this file next to your code and run
``pytest test_example.py``. See docs/testing.md.
"""

import signal

import pytest

pytestmark = pytest.mark.timeout(30)   # a hung bus fails the test instead of the CI job


def test_the_builtin_pair_binds_and_talks(auxbus):
    auxbus.parent("ixd")                           # PCI owner: adds ixd.eth.0
    auxbus.child("idpf_eth")                       # aux driver: matches ixd.eth, probes, binds
    auxbus.wait("bound", "ixd.eth.0")

    out = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})   # child -> parent, sync
    assert out["errno"] == 0, out["message"]
    assert out["reply"]["filter_id"] == 0

    call = auxbus.expect(kind="call", event="SET_MAC")          # the broker's trace of that call
    assert call["errno"] == 0 and call["src"] == "child idpf_eth" and call["dst"] == "parent ixd"

    bad = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "nope"})
    assert bad["error"] == "EINVAL" and "$.payload.addr" in bad["message"]


def test_my_driver_gets_only_what_it_handles(auxbus):
    auxbus.parent("ixd")
    eth = auxbus.child("my_eth:LinkOnlyEth")       # your own driver, module:Class
    auxbus.wait("bound", "ixd.eth.0")

    dev = next(d for d in auxbus.ls()["devices"] if d["name"] == "ixd.eth.0")
    handled = {e["event"] for e in dev["events"] if e["deliverable"] and e["direction"] == "parent->child"}
    assert handled == {"LINK_CHANGE"}

    # ixd told the driver its link state at bind; this one is ours (payload as a subset):
    assert auxbus.send("ixd.eth.0", "LINK_CHANGE", {"up": True, "speed_mbps": 25000})["errno"] == 0
    event = auxbus.expect(kind="event", event="LINK_CHANGE", payload={"speed_mbps": 25000})
    assert event["direction"] == "parent->child"
    eth.wait_record("link", speed_mbps=25000)      # the driver's journal, read through the bus
    assert eth.data("ixd.eth.0") == {"link_up": True}    # its adev.data, the same way

    assert auxbus.send("ixd.eth.0", "FW_EVENT", {"kind": "HEALTH", "state": 1})["error"] == "EOPNOTSUPP"


def test_a_crashed_driver_is_unbound_and_calls_fail_fast(auxbus):
    auxbus.parent("ixd")
    eth = auxbus.child("idpf_eth")
    auxbus.wait("bound", "ixd.eth.0")
    auxbus.mark()                                  # expectations below only look at what follows

    auxbus.kill(eth, signal.SIGKILL)               # fault injection
    auxbus.expect_uevent("UNBIND", dev="ixd.eth.0")
    auxbus.expect_uevent("PEER_DEAD", name="idpf_eth")
    assert auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})["error"] == "ENODEV"

    auxbus.child("idpf_eth")                       # it comes back and binds again
    auxbus.expect_uevent("BIND", dev="ixd.eth.0")
