"""The hardware-backed parents and their drivers across real processes: Model A (ixd +
idpf_eth), Model B (idpf + idpf_prime), mlx5_core with three children, ice + irdma; the
proposal's three pain points (DCB, netshaper, queue enable) with their error paths; resets
in each parent's shape; the demos.

What the processes did is read from their journals ($AXT_LOG, auxipc/runtime/journal.py); waiting
is on those records and on bus state, never on sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Proc as TProc

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent
TSA = ["ETS"] * 8


def dcb(prio_tc, bw, pfc_en=0) -> dict:
    return {"ets": {"tc_tx_bw": bw, "tc_rx_bw": bw, "tc_tsa": TSA, "prio_tc": prio_tc}, "pfc": {"pfc_en": pfc_en}}


TWO_TC = dcb([0, 0, 0, 0, 1, 1, 1, 1], [60, 40, 0, 0, 0, 0, 0, 0], pfc_en=0x10)


def send(b, dev: str, event: str, payload=None, side: str = "child", timeout: float = 5.0) -> dict:
    return b.client.send_event(dev, event, side, payload or {}, timeout)


def ok(out: dict) -> dict:
    assert out["errno"] == 0, out
    return out


def refused(out: dict, error: str, fragment: str = "") -> None:
    assert out["error"] == error and fragment in out["message"], out


def count(proc, what: str, **match) -> int:
    return len(proc.records(what, **match))


# ---- Model A: one ixd + idpf_eth pair shared by the tests that do not reset ----------------------

@pytest.fixture(scope="module")
def model_a(make_module_bus):
    b = make_module_bus()
    b.p = b.parent("ixd", AUXIPC_HW="leaves_per_tc=8")
    b.c = b.child("idpf_eth")
    b.c.wait_record("queues", state="running")
    b.p.wait_record("post_config", dev="ixd.eth.0")
    yield b
    b.stop(b.c)
    b.stop(b.p)


def test_model_a_bind_learns_link_and_enables_queues(model_a):
    """At bind the driver gets the link (replayed), asks for queues (the parent answers with
    the queue ids), enables them (one scheduler leaf per Tx queue), then POST_CONFIG."""
    c, p = model_a.c, model_a.p
    link = c.wait_record("link", dev="ixd.eth.0")
    assert (link["up"], link["speed_mbps"], link["duplex"]) == (True, 100000, "FULL")
    assert c.records("queues", state="running")[0]["txq_start"] == 0
    [cfg] = p.records("queues", state="configured", vport=0)[:1]
    assert (cfg["num_txq"], cfg["txq_start"]) == (4, 0)
    enabled = p.records("queues", state="enabled", vport=0)[0]
    assert enabled["txq"] == [0, 1, 2, 3] and len(set(enabled["teids"])) == 4
    assert p.records("post_config")[0]["num_txq"] == 4
    dev = model_a.device("ixd.eth.0")
    assert dev["bind"] == "bound" and dev["driver"] == "idpf_eth"


def test_dcb_change_comes_back_as_tc_change(model_a):
    """Pain point 1 through the CLI: dcbnl on the child's netdev -> DCB_CONFIG (under rtnl) ->
    the parent validates and programs, returns; BEFORE/AFTER_TC_CHANGE come back from a worker.
    The same config again is no hardware change: no TC change events."""
    c, p = model_a.c, model_a.p
    before = count(c, "tc", phase="after")
    rc, out, err = model_a.send("ixd.eth.0", "DCB_CONFIG", "child", TWO_TC)
    assert (rc, out["errno"]) == (0, 0), err
    after = model_a.wait_until(lambda: c.records("tc", phase="after")[before:], 5, "AFTER_TC_CHANGE")[0]
    assert (after["num_tc"], after["up2tc"], after["rel_bw"]) == (2, [0, 0, 0, 0, 1, 1, 1, 1], [60, 40])
    [b4] = c.records("tc", phase="before")[before:before + 1]
    assert b4["t"] < after["t"]
    change = p.wait_record("tc_change", num_tc=2)
    assert change["to"] == ["ixd.eth.0"]
    assert p.records("sched", num_tc=2)[0]["tree"]["vport0"].keys() == {"tc0", "tc1"}
    op = c.wait_record("op", event="DCB_CONFIG", errno=0)
    assert op["t"] < change["t"]                  # the call returned before the TC change ran

    ok(send(model_a, "ixd.eth.0", "DCB_CONFIG", TWO_TC))
    p.wait_record("dcb", changed=False)
    assert count(p, "tc_change") == 1


@pytest.mark.parametrize("payload,error,fragment", [
    (dcb([0, 0, 0, 0, 2, 2, 2, 2], [60, 0, 40, 0, 0, 0, 0, 0]), "EINVAL",
     "$.payload.ets.prio_tc: traffic classes must be contiguous from 0 (the priorities map to 0, 2)"),
    (dcb([0, 1, 2, 3, 4, 0, 0, 0], [20, 20, 20, 20, 20, 0, 0, 0]), "EINVAL",
     "$.payload.ets.prio_tc: 5 traffic classes; the hardware has 4"),
    (dcb([0, 0, 0, 0, 1, 1, 1, 1], [60, 20, 20, 0, 0, 0, 0, 0]), "EINVAL",
     "$.payload.ets.tc_tx_bw[2]: 20% for traffic class 2, which no priority maps to"),
    (dcb([0, 0, 0, 0, 1, 1, 1, 1], [60, 30, 0, 0, 0, 0, 0, 0]), "EINVAL", "$.payload.ets.tc_tx_bw"),
    (dcb([0, 0, 0, 0, 1, 1, 1, 1], [60, 40, 0, 0, 0, 0, 0, 0], pfc_en=0x1F), "EINVAL",
     "$.payload.pfc.pfc_en: PFC on 5 priorities; the hardware supports 4"),
    ({**TWO_TC, "ets": {**TWO_TC["ets"], "tc_tsa": ["VENDOR"] * 8}}, "EINVAL", "VENDOR is not supported"),
], ids=["not-contiguous", "too-many-tcs", "bw-on-unused-tc", "bw-not-100", "pfc-cap", "tsa"])
def test_dcb_refusals_change_nothing(model_a, payload, error, fragment):
    c = model_a.c
    tcs = count(c, "tc")
    refused(send(model_a, "ixd.eth.0", "DCB_CONFIG", payload), error, fragment)
    assert c.wait_record("op", event="DCB_CONFIG", errno=error)
    assert count(c, "tc") == tcs


def test_netshaper_lands_on_the_tree_node(model_a):
    """Pain point 2: a rate limit through the child lands on the parent's scheduling-tree node:
    a Tx queue's leaf, the vport (NETDEV), a TC node (NODE, by teid)."""
    p = model_a.p
    teids = p.records("queues", state="enabled", vport=0)[-1]["teids"]
    ok(send(model_a, "ixd.eth.0", "NETSHAPER_SET", {"handle": {"scope": "QUEUE", "id": 1},
                                                      "bw_min": 10**8, "bw_max": 2 * 10**9, "burst": 65536}))
    q = p.wait_record("shaper", scope="QUEUE", id=1)
    assert (q["teid"], q["node"], q["bw_min"], q["bw_max"], q["burst"]) == (teids[1], "queue", 10**8, 2 * 10**9,
                                                                           65536)
    ok(send(model_a, "ixd.eth.0", "NETSHAPER_SET", {"handle": {"scope": "NETDEV"}, "bw_max": 40 * 10**9}))
    assert p.wait_record("shaper", scope="NETDEV")["node"] == "vport"
    ok(send(model_a, "ixd.eth.0", "NETSHAPER_SET", {"handle": {"scope": "NODE", "id": 3}, "weight": 50}))
    assert p.wait_record("shaper", scope="NODE", id=3)["node"] == "tc"


@pytest.mark.parametrize("payload,error,fragment", [
    ({"handle": {"scope": "QUEUE", "id": 9}, "bw_max": 10**9}, "EINVAL",
     "$.payload.handle.id: ixd.eth.0 has no enabled Tx queue 9 (enabled: [0, 1, 2, 3])"),
    ({"handle": {"scope": "NETDEV", "id": 2}}, "EINVAL", "a NETDEV shaper has id 0, not 2"),
    ({"handle": {"scope": "NODE", "id": 1}}, "EINVAL", "teid 1 is not a node of ixd.eth.0's vport 0"),
    ({"handle": {"scope": "QUEUE", "id": 0}, "bw_min": 2 * 10**9, "bw_max": 10**9}, "EINVAL",
     "$.payload.bw_min: 2000000000 bps is above bw_max 1000000000 bps"),
    ({"handle": {"scope": "QUEUE", "id": 0}, "bw_max": 400 * 10**9}, "EINVAL", "exceeds the port speed"),
    ({"handle": {"scope": "QUEUE", "id": 0}, "bw_max": 1000}, "EINVAL", "below the hardware's minimum"),
    ({"handle": {"scope": "QUEUE", "id": 0}, "metric": "PPS", "bw_max": 10**6}, "EOPNOTSUPP", "bits per second"),
    ({"handle": {"scope": "QUEUE", "id": 0}, "priority": 9}, "EINVAL", "$.payload.priority"),
], ids=["no-such-queue", "netdev-id", "foreign-node", "min-above-max", "above-port", "below-min", "pps",
        "priority"])
def test_netshaper_refusals(model_a, payload, error, fragment):
    refused(send(model_a, "ixd.eth.0", "NETSHAPER_SET", payload), error, fragment)


def test_queue_enable_errors_leave_nothing_behind(model_a):
    """Pain point 3's error paths: ids past the function's queues, rings the hardware cannot
    take, enabling before configuring, a mask past the vport, and a TC with no room (-ENOSPC,
    every leaf the request had placed given back)."""
    p = model_a.p
    refused(send(model_a, "ixd.eth.0", "QUEUE_CONFIG", {"vport_id": 1, "num_txq": 100, "num_rxq": 4}),
            "EINVAL", "$.payload.num_txq: 100 above the function's 64 Tx queues")
    refused(send(model_a, "ixd.eth.0", "QUEUE_CONFIG", {"vport_id": 1, "num_txq": 4, "num_rxq": 4,
                                                          "tx_ring_size": 100}), "EINVAL", "not a multiple of 32")
    refused(send(model_a, "ixd.eth.0", "ENABLE_QUEUES", {"vport_id": 2}), "EINVAL",
            "vport 2 of ixd.eth.0 has no queues: QUEUE_CONFIG first")
    out = ok(send(model_a, "ixd.eth.0", "QUEUE_CONFIG", {"vport_id": 1, "num_txq": 20, "num_rxq": 2}))
    assert out["reply"] == {"txq_start": 4, "rxq_start": 4}
    refused(send(model_a, "ixd.eth.0", "ENABLE_QUEUES", {"vport_id": 1, "txq_mask": 1 << 20}), "EINVAL",
            "$.payload.txq_mask: bit 20 set, but vport 1 has 20 queues")
    refused(send(model_a, "ixd.eth.0", "QUEUE_CONFIG", {"vport_id": 2, "num_txq": 41, "num_rxq": 1}), "ENOSPC",
            "no 41 contiguous free Tx queues left in ixd")
    refused(send(model_a, "ixd.eth.0", "ENABLE_QUEUES", {"vport_id": 1}), "ENOSPC",
            "of vport 1 is full (8 leaves)")
    rec = p.wait_record("queues", vport=1, state="refused", error="ENOSPC")
    assert rec["released"] > 0 and all(n == 0 for n in rec["tree"]["vport1"].values())
    ok(send(model_a, "ixd.eth.0", "ENABLE_QUEUES", {"vport_id": 1, "txq_mask": 0b11}))    # what fits, fits
    ok(send(model_a, "ixd.eth.0", "ENABLE_QUEUES", {"vport_id": 1, "txq_mask": 0b11, "enable": False}))
    assert sum(p.records("queues", vport=1, state="disabled")[-1]["tree"]["vport1"].values()) == 0


def test_filters_and_link_settings(model_a):
    """MAC filters are atomic (the parent defers them: errors show in its journal), VLANs
    sync under rtnl, the primary MAC has a slot; link settings retrain the link."""
    p, c = model_a.p, model_a.c
    assert ok(send(model_a, "ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"}))["reply"]["filter_id"] == 0
    refused(send(model_a, "ixd.eth.0", "SET_MAC", {"addr": "01:00:5e:00:00:01"}), "EINVAL", "multicast")
    for _ in range(2):
        ok(send(model_a, "ixd.eth.0", "MAC_FILTER", {"addr": "02:00:00:00:00:09"}))
    assert p.wait_record("mac", op="ADD", addr="02:00:00:00:00:09")["slot"] == 1
    assert p.wait_record("mac", op="ADD", error="EEXIST")
    ok(send(model_a, "ixd.eth.0", "VLAN_FILTER", {"vid": 10}))
    refused(send(model_a, "ixd.eth.0", "VLAN_FILTER", {"vid": 10}), "EEXIST")
    refused(send(model_a, "ixd.eth.0", "VLAN_FILTER", {"vid": 11, "proto": 0x88A8}), "EOPNOTSUPP", "QinQ")
    refused(send(model_a, "ixd.eth.0", "VLAN_FILTER", {"vid": 12, "op": "DEL"}), "ENOENT")

    links = count(c, "link")
    refused(send(model_a, "ixd.eth.0", "ETHTOOL_OP", {"op": "SET_LINK_KSETTINGS", "speed_mbps": 40000}),
            "EINVAL", "40000 Mb/s is not supported")
    ok(send(model_a, "ixd.eth.0", "ETHTOOL_OP", {"op": "SET_LINK_KSETTINGS", "speed_mbps": 25000,
                                                   "duplex": "FULL", "autoneg": False}))
    got = model_a.wait_until(lambda: c.records("link")[links:][1:], 5, "link down then up")
    assert [(r["up"], r["speed_mbps"]) for r in c.records("link")[links:links + 2]] == [(False, -1), (True, 25000)]
    assert got[0]["autoneg"] is False
    refused(send(model_a, "ixd.eth.0", "ETHTOOL_OP", {"op": "SET_RINGPARAM", "rx_pending": 100}), "EINVAL")
    # The driver's user-request path keeps the runtime's checks, in the same order.
    refused(send(model_a, "ixd.eth.0", "LINK_CHANGE", {}), "EINVAL", "LINK_CHANGE goes parent->child")
    refused(send(model_a, "ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01", "x": 1}), "EINVAL",
            "$.payload.x: unknown field")


def test_fw_carrier_flap_and_hang(model_a):
    """SIGUSR2: the FW reports a carrier loss and its return (LINK_CHANGE down, up). SIGUSR1:
    the FW hangs: a health event goes down, mailbox requests time out -ETIME, nothing is
    programmed; a second SIGUSR1 and it answers again."""
    p, c = model_a.p, model_a.c
    links = count(c, "link")
    os.kill(p.pid, signal.SIGUSR2)
    model_a.wait_until(lambda: len(c.records("link")) >= links + 2, 5, "a flap")
    assert [r["up"] for r in c.records("link")[links:links + 2]] == [False, True]

    os.kill(p.pid, signal.SIGUSR1)
    assert c.wait_record("fw_event", kind="HEALTH", state=1)
    refused(send(model_a, "ixd.eth.0", "VIRTCHNL_PASSTHROUGH", {"op": 1, "timeout_ms": 100}), "ETIME",
            "the FW did not answer within 100 ms")
    os.kill(p.pid, signal.SIGUSR1)
    assert c.wait_record("fw_event", kind="HEALTH", state=0)
    out = ok(send(model_a, "ixd.eth.0", "VIRTCHNL_PASSTHROUGH", {"op": 1}))
    assert out["reply"] == {"retval": 0, "buf": [2, 0, 0, 0, 0, 0, 0, 0]}
    assert ok(send(model_a, "ixd.eth.0", "VIRTCHNL_PASSTHROUGH", {"op": 77}))["reply"]["retval"] == -95
    refused(send(model_a, "ixd.eth.0", "VIRTCHNL_PASSTHROUGH", {"op": 0}), "EINVAL", "$.payload.op")


# ---- resets ----------------------------------------------------------------------------------------

def test_model_a_reset_in_the_middle_of_queue_enable_then_a_failed_reset(bus):
    """A reset request while the driver's ENABLE_QUEUES waits on the FW: the enable fails
    -ENXIO (the mailbox was shut down) and gives its leaves back; the reset replugs the
    device and the driver enables its queues again. Then the FW hangs: the next reset fails
    (-ETIME on the mailbox INIT) and the device stays unplugged."""
    p = bus.parent("ixd", AUXIPC_HW="mbx_latency=0.3,mbx_timeout=0.6")
    # Started without waiting for its ready line: it prints it once its first open is done.
    log = p.log.with_name(p.log.name.replace("parent", "child"))
    child = bus.popen("child", "--driver", "idpf_eth", AXT_LOG=str(log))
    c = TProc("child", "child", child.pid, log, log)
    p.wait_record("mbx", op="ENABLE_QUEUES")          # the driver's open waits on the FW
    ok(send(bus, "ixd.eth.0", "REQUEST_RESET", {"reset_type": "FUNC"}))
    rec = p.wait_record("queues", vport=0, state="refused")
    assert (rec["error"], rec["released"], rec["tree"]) == ("ENXIO", 4, {"vport0": {"tc0": 0}})
    assert "shut down while the request waited (FUNC reset in progress)" in rec["message"]
    first = c.wait_record("queues", error="ENXIO")
    assert first["state"] in ("abandoned", "failed")     # whether RESET_WARN or the error came first
    p.wait_record("reset", state="IDLE")
    assert [r["state"] for r in p.records("reset")] == ["PENDING", "WARNING", "RESETTING", "REBUILDING", "IDLE"]
    assert p.records("reset")[0]["aborted"] == 1
    c.wait_record("queues", state="running")
    assert [r["what"] for r in c.records() if r["what"] in ("reset", "remove", "probe")] == [
        "probe", "reset", "remove", "probe"]
    assert bus.actions("ixd.eth.0")[-5:] == ["UNBIND", "REMOVE", "RELEASE", "ADD", "BIND"]
    assert p.records("queues", state="enabled")[-1]["tree"] == {"vport0": {"tc0": 4}}

    os.kill(p.pid, signal.SIGUSR1)
    c.wait_record("fw_event", state=1)
    ok(send(bus, "ixd.eth.0", "REQUEST_RESET", {"reset_type": "DEV"}))
    failed = p.wait_record("reset", state="FAILED")
    assert (failed["error"], failed["kind"]) == ("ETIME", "DEV") and "INIT" in failed["message"]
    assert bus.actions("ixd.eth.0")[-3:] == ["UNBIND", "REMOVE", "RELEASE"]      # not plugged again
    assert bus.device("ixd.eth.0") is None


def test_model_b_flow(bus):
    """Model B: the vport's link comes up once IDPF' configured it; DCB is not the parent's
    (discovery: -EOPNOTSUPP); a reset keeps the device bound: RESET_WARN, -EBUSY for a second
    request and for configuration meanwhile, CAPS_CHANGE, RESET_COMPLETE, the driver reopens
    with the queues it now has; after a failed reset, -EIO; REMOVE_NOTIFY is deferred."""
    p = bus.parent("idpf", AUXIPC_HW="mbx_latency=0.02,mbx_timeout=0.3,reset_time=0.4,"
                                     "reset_max_txq=2,reset_max_rxq=2")
    c = bus.child("idpf_prime")
    bus.wait_until(lambda: [r for r in c.records("link") if r["up"]], 5, "the vport's link up")
    assert [r["up"] for r in c.records("link")][:2] == [False, True]
    assert c.records("link")[1]["speed_mbps"] == 200000
    assert p.records("post_config")[0]["t"] < p.records("link")[0]["t"]
    refused(send(bus, "idpf.eth.0", "DCB_CONFIG", TWO_TC), "EOPNOTSUPP", "does not handle DCB_CONFIG")
    snap = bus.device("idpf.eth.0")
    assert snap["driver"] == "idpf_prime"

    ok(send(bus, "idpf.eth.0", "REQUEST_RESET", {"reset_type": "FUNC"}))
    p.wait_record("reset", state="RESETTING")
    refused(send(bus, "idpf.eth.0", "REQUEST_RESET", {"reset_type": "FUNC"}), "EBUSY",
            "a FUNC reset is already running (state RESETTING)")
    refused(send(bus, "idpf.eth.0", "QUEUE_CONFIG", {"num_txq": 1, "num_rxq": 1}), "EBUSY", "reset is running")
    caps = c.wait_record("caps")
    assert (caps["max_txq"], caps["num_queues"]) == (2, 2)
    done = c.wait_record("reset", phase="complete")
    assert done["status"] == 0 and caps["t"] < done["t"]
    reopened = bus.wait_until(lambda: c.records("queues", state="running")[1:], 5, "reopened")[0]
    assert reopened["num"] == 2
    assert bus.actions("idpf.eth.0") == ["ADD", "BIND"]                 # never unplugged
    assert [r["what"] for r in c.records() if r["what"] in ("probe", "remove")] == ["probe"]

    os.kill(p.pid, signal.SIGUSR1)                   # the control plane stops answering
    c.wait_record("fw_event", state=1)
    ok(send(bus, "idpf.eth.0", "REQUEST_RESET", {"reset_type": "DEV"}))
    assert c.wait_record("reset", phase="complete", reset_type="DEV")["status"] == -5
    assert c.wait_record("queues", state="down")
    refused(send(bus, "idpf.eth.0", "REQUEST_RESET", {"reset_type": "FUNC"}), "EIO",
            "the previous DEV reset failed")
    refused(send(bus, "idpf.eth.0", "QUEUE_CONFIG", {"num_txq": 1, "num_rxq": 1}), "EIO")

    ok(send(bus, "idpf.eth.0", "REMOVE_NOTIFY"))
    bus.wait_uevent("RELEASE", "idpf.eth.0")
    assert c.records("remove")


# ---- mlx5: several children, detach/attach ------------------------------------------------------------

def test_mlx5_several_children(bus):
    """mlx5_core adds eth, rdma and vnet; one process runs the three drivers. FW link flaps
    reach the netdev children only; a DCB change from mlx5e comes back to every child that
    handles TC changes; a reset is detach/attach (suspend/resume), no RESET_WARN; mlx5_ib
    learns from discovery that there are no queue sets."""
    p = bus.parent("mlx5_core", AUXIPC_HW="link_flap=0.15,link_flaps=1,flap_down=0.05")
    c = bus.child("mlx5e", "mlx5_ib", "mlx5_vdpa")
    names = ["mlx5_core.eth.0", "mlx5_core.rdma.0", "mlx5_core.vnet.0"]
    bus.wait_ls(lambda s: all((bus.device(n, s) or {}).get("bind") == "bound" for n in names))
    for dev in ("mlx5_core.eth.0", "mlx5_core.vnet.0"):
        bus.wait_until(lambda dev=dev: [r["up"] for r in c.records("link", dev=dev)][-3:] == [True, False, True], 5,
                       f"a FW flap on {dev}")
    assert not c.records("link", dev="mlx5_core.rdma.0")

    ok(send(bus, "mlx5_core.eth.0", "DCB_CONFIG", TWO_TC))
    p.wait_record("tc_change", num_tc=2)
    for dev in ("mlx5_core.eth.0", "mlx5_core.rdma.0"):
        assert c.wait_record("tc", dev=dev, phase="after")["num_tc"] == 2
    assert p.records("tc_change")[0]["to"] == names and not c.records("tc", dev="mlx5_core.vnet.0")
    refused(send(bus, "mlx5_core.rdma.0", "QSET_ADD", {"qs_handle": 1}), "EOPNOTSUPP", "QSET_ADD")
    assert c.records("qsets") == []

    running = count(c, "queues", dev="mlx5_core.eth.0", state="running")
    ok(send(bus, "mlx5_core.rdma.0", "REQUEST_RESET", {"reset_type": "FUNC"}))
    p.wait_record("reset", state="IDLE")
    for driver in ("mlx5e", "mlx5_ib", "mlx5_vdpa"):
        assert [r["what"] for r in c.records(driver=driver) if r["what"] in ("detach", "attach", "queues")
                and r.get("state") in (None, "quiesced")] in (["detach", "attach"], ["queues", "attach"])
    bus.wait_until(lambda: count(c, "queues", dev="mlx5_core.eth.0", state="running") > running, 5, "reopen")
    assert not c.records("reset")                                         # no RESET_WARN in mlx5's shape
    for dev in names:
        assert bus.actions(dev) == ["ADD", "BIND", "SUSPEND", "RESUME"]   # never unplugged

    os.kill(p.pid, signal.SIGUSR1)
    for dev in ("mlx5_core.eth.0", "mlx5_core.vnet.0"):
        c.wait_record("fw_event", dev=dev, kind="HEALTH", state=1)


# ---- ice: RDMA queue sets on the scheduling tree -----------------------------------------------------

def test_ice_irdma_qsets_lldp_and_reset(bus):
    """irdma attaches a queue set per TC (QSET_ADD answers the teid); the FW LLDP agent's DCB
    change brings a second TC and a second queue set; the TC is full at 2 leaves (-ENOSPC);
    QSET_DEL checks the teid; GLOBAL is not the child's to request; FUNC: RESET_WARN, unplug,
    replug, and the new irdma learns the 2 TCs; a FW hang is a CRIT_ERR."""
    p = bus.parent("ice", AUXIPC_HW="leaves_per_tc=2,lldp=0.1,mbx_timeout=0.2")
    c = bus.child("irdma")
    first = c.wait_record("qsets")
    assert list(first["teids"]) == ["tc0"] and first["errors"] == []
    assert p.wait_record("dcb", by="FW LLDP agent")["num_tc"] == 2
    second = bus.wait_until(lambda: [r for r in c.records("qsets") if len(r.get("teids", {})) == 2], 5, "2 qsets")[0]
    assert c.records("tc", phase="after")[0]["up2tc"] == [0, 0, 0, 1, 0, 0, 0, 0]

    out = ok(send(bus, "ice.roce.0", "QSET_ADD", {"tc": 0, "qs_handle": 7}))
    teid = out["reply"]["teid"]
    assert teid not in second["teids"].values()
    refused(send(bus, "ice.roce.0", "QSET_ADD", {"tc": 0, "qs_handle": 8}), "ENOSPC", "traffic class 0 of vport 0")
    refused(send(bus, "ice.roce.0", "QSET_ADD", {"tc": 5, "qs_handle": 8}), "EINVAL", "not enabled (num_tc 2)")
    refused(send(bus, "ice.roce.0", "QSET_DEL", {"qs_handle": 8, "teid": teid}), "EINVAL", "is not queue set 8")
    ok(send(bus, "ice.roce.0", "QSET_DEL", {"qs_handle": 7, "teid": teid}))
    refused(send(bus, "ice.roce.0", "SET_MAC", {"addr": "02:00:00:00:00:01"}), "EOPNOTSUPP")

    refused(send(bus, "ice.roce.0", "REQUEST_RESET", {"reset_type": "GLOBAL"}), "EINVAL", "FUNC or DEV")
    ok(send(bus, "ice.roce.0", "REQUEST_RESET", {"reset_type": "FUNC"}))
    warn = c.wait_record("reset", phase="warn")
    assert warn["state"] == "quiesced"
    p.wait_record("reset", state="IDLE")
    bus.wait_until(lambda: len(c.records("probe")) == 2, 5, "re-probe")
    again = bus.wait_until(lambda: [r for r in c.records("qsets") if r["t"] > warn["t"]
                                    and len(r.get("teids", {})) == 2], 5, "2 qsets after the reset")[0]
    assert again["errors"] == []
    assert bus.actions("ice.roce.0")[-5:] == ["UNBIND", "REMOVE", "RELEASE", "ADD", "BIND"]

    os.kill(p.pid, signal.SIGUSR1)
    assert c.wait_record("crit_err")["reg"] == "0x40000000"


# ---- the demos ------------------------------------------------------------------------------------

def _demo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AUXIPC_RUNTIME_DIR", None)
    return subprocess.run([sys.executable, "-m", "auxipc", "demo", *args], capture_output=True, text=True,
                          timeout=40, cwd=REPO, env=env)


def _in_timeline(out: str, *lines: str) -> None:
    """Each line, with ``...`` standing for the padding and numbering that vary, is in the timeline."""
    for line in lines:
        pattern = r"\s+(?:async #\d+ )?".join(re.escape(part.strip()) for part in line.split("..."))
        assert re.search(pattern, out), f"{line!r} not in the timeline:\n{out}"


@pytest.mark.slow
@pytest.mark.timeout(50)
def test_demo_model_a():
    r = _demo("model-a")
    assert r.returncode == 0, r.stdout + r.stderr
    _in_timeline(r.stdout,
                 'event  LINK_CHANGE   ixd.eth.0    parent ixd -> child idpf_eth ... {"up":false',
                 "call   DCB_CONFIG    ixd.eth.0    child idpf_eth -> parent ixd ... = 0",
                 "call   BEFORE_TC_CHANGE ixd.eth.0 ... parent ixd -> child idpf_eth",
                 "call   AFTER_TC_CHANGE ixd.eth.0 ... parent ixd -> child idpf_eth",
                 "hw     tc_change     ixd          num_tc=2",
                 "-> DCB_CONFIG = -22 EINVAL: $.payload.ets.prio_tc", "hw     shaper        ixd.eth.0    scope=QUEUE id=1",
                 "-> ENABLE_QUEUES = -28 ENOSPC", "call   RESET_WARN    ixd.eth.0    parent ixd -> child idpf_eth ... = 0",
                 "hw     reset         ixd          state=IDLE kind=FUNC", "call   PREPARE_DETACH",
                 "demo ok: 11 steps")


@pytest.mark.slow
@pytest.mark.timeout(50)
def test_demo_model_b_and_the_default_demo():
    r = _demo("model-b")
    assert r.returncode == 0, r.stdout + r.stderr
    _in_timeline(r.stdout,
                 "call   QUEUE_CONFIG  idpf.eth.0   child idpf_prime -> parent idpf ... = 0",
                 "call   ENABLE_QUEUES idpf.eth.0   child idpf_prime -> parent idpf",
                 "event  POST_CONFIG   idpf.eth.0   child idpf_prime -> parent idpf",
                 'event  LINK_CHANGE   idpf.eth.0   parent idpf -> child idpf_prime ... {"up":true,"speed_mbps":200000',
                 "-> DCB_CONFIG = -95 EOPNOTSUPP", "-> VIRTCHNL_PASSTHROUGH = -62 ETIME",
                 "call   CAPS_CHANGE   idpf.eth.0   parent idpf -> child idpf_prime",
                 "event  RESET_COMPLETE idpf.eth.0 ... parent idpf -> child idpf_prime", '"num_txq":2',
                 "demo ok: 8 steps")
    r = _demo()
    assert r.returncode == 0 and "demo ok: 10 steps" in r.stdout, r.stdout + r.stderr
    r = _demo("model-c")
    assert r.returncode == 2 and "model-c" in r.stderr
