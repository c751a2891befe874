"""``auxipc demo``: a broker, the ixd parent and the idpf_eth child, events both ways.

Each step says what it does; the bus activity it causes is printed as it
happens (bus notifications, sync calls with their result and latency, async
events with their payload), read from the broker's publisher like
``auxipc trace`` would.
"""

from __future__ import annotations

from auxipc.testing.demo_models import Demo, bus, call, ev


def default(d: Demo) -> None:
    dev = "ixd.eth.0"
    d.step("Start the broker: it owns the bus and enforces the driver core's rules")
    d.start("broker", "broker")
    d.step("Start the PCI owner (model ixd): init + add ixd.eth.0; no driver matches yet")
    parent = d.start("parent-ixd", "parent", "--model", "ixd")
    d.until(bus("ADD", dev))
    d.step("Start the auxiliary driver idpf_eth (id_table ixd.eth): it matches, probes and binds")
    child = d.start("child-idpf_eth", "child", "--driver", "idpf_eth")
    d.until(bus("BIND", dev), ev("POST_CONFIG"))

    d.step("Parent -> child, async: a FW health event (fans out over pub/sub)")
    d.send(dev, "FW_EVENT", "parent", {"kind": "HEALTH", "state": 1})
    d.step("Parent -> child, async: link up at 100 Gb/s")
    d.send(dev, "LINK_CHANGE", "parent", {"up": True, "speed_mbps": 100000, "duplex": "FULL", "autoneg": True})
    d.step("Child -> parent, sync with a reply: program the primary MAC")
    d.send(dev, "SET_MAC", "child", {"addr": "02:00:5e:10:00:01"})

    d.step("Child -> parent, sync: request a FUNC reset (returns at once; the parent resets afterwards:\n"
           "    RESET_WARN to the child, which quiesces before replying; delete; reset; add; re-probe)")
    d.send(dev, "REQUEST_RESET", "child", {"reset_type": "FUNC"},
           wait=(call("RESET_WARN"), bus("BIND", dev), ev("POST_CONFIG")))

    d.step("Child -> parent, sync: a GLOBAL reset is not the child's to request: -EINVAL")
    d.send(dev, "REQUEST_RESET", "child", {"reset_type": "GLOBAL"}, expect="EINVAL")

    d.step("Stop the driver process: driver unregister runs remove() for its device")
    d.stop(child)
    d.until(bus("UNBIND", dev), bus("UNREGISTER"))

    d.step("Stop the PCI owner: delete + uninit; release() runs at the last put")
    d.stop(parent)
    d.until(bus("RELEASE", dev), bus("UNREGISTER"))


def run_demo(runtime_dir: str | None = None, record: str | None = None) -> int:
    """``record``: also write every record seen to this file, as JSON lines
    (``auxipc trace render FILE --mermaid OUT.md`` draws it)."""
    return Demo("auxipc demo", runtime_dir, record).run(default)
