"""The emulated hardware behind the parents (parent/hw/), without processes: each
state machine's table, every refusal and its errno, the mailbox's clock."""

from __future__ import annotations

import pytest

from auxipc.broker.lifecycle import IllegalTransition
from parent.hw import Hardware, HwConfig
from parent.hw.caps import CapSet
from parent.hw.dcb import DEFAULT, Dcb
from parent.hw.filters import MacTable, VlanTable
from parent.hw.link import Link, LinkState
from parent.hw.mailbox import Mailbox, MbxState
from parent.hw.reset import Reset, ResetState
from parent.hw.sched import Kind, QueueSpace, SchedTree
from parent.hw.shaper import MIN_RATE, validate
from proto.errno import AuxError
from proto.events import (
    DcbConfig,
    Duplex,
    Ets,
    MacKind,
    NetshaperSet,
    Pfc,
    ResetType,
    ShaperHandle,
    ShaperMetric,
    ShaperScope,
    Tsa,
)

pytestmark = pytest.mark.timeout(10)


def errno_of(fn, *args, **kw) -> tuple[str, str]:
    with pytest.raises(AuxError) as info:
        fn(*args, **kw)
    return info.value.name, info.value.message


# ---- link -------------------------------------------------------------------------------------

def test_link_trains_at_the_best_common_speed_and_flaps():
    link = Link("ixd", speeds=(10_000, 25_000, 100_000))
    assert link.status().up is False and link.state is LinkState.DOWN
    assert link.bring_up() and link.status().speed_mbps == 100_000 and link.status().duplex is Duplex.FULL
    link.carrier_off()
    assert (link.state, link.status().speed_mbps, link.flaps) == (LinkState.DOWN, -1, 1)
    link.partner = (10_000, 25_000)
    assert link.bring_up() and link.speed == 25_000


def test_link_illegal_events_name_state_and_event():
    link = Link("ixd")
    with pytest.raises(IllegalTransition) as info:
        link.m.fire("link_up")                      # no carrier
    assert str(info.value) == "EINVAL: link ixd: 'link_up' is illegal in state DOWN"
    link.bring_up()
    assert errno_of(link.carrier_on)[0] == "EINVAL"   # already has carrier


def test_link_ksettings_are_checked_and_force_a_renegotiation():
    link = Link("ixd", speeds=(10_000, 25_000, 100_000), partner=(25_000, 100_000))
    link.bring_up()
    assert errno_of(link.configure, 40_000, Duplex.FULL, False) == (
        "EINVAL", "$.payload.speed_mbps: 40000 Mb/s is not supported by this port (10000, 25000, 100000)")
    assert errno_of(link.configure, 25_000, Duplex.HALF, False)[1].startswith("$.payload.duplex: half duplex")
    assert errno_of(link.configure, -1, Duplex.FULL, False)[0] == "EINVAL"
    link.configure(25_000, Duplex.FULL, False)
    assert link.state is LinkState.TRAINING
    assert link.train() and (link.speed, link.autoneg) == (25_000, False)
    link.configure(10_000, Duplex.FULL, False)       # the partner cannot do 10G: the link never trains
    assert not link.train() and link.state is LinkState.TRAINING and not link.status().up


# ---- reset ------------------------------------------------------------------------------------

def test_reset_runs_its_states_in_order():
    r = Reset("ixd")
    r.request(ResetType.FUNC)
    assert r.state is ResetState.PENDING and r.running
    for step, state in ((r.warn, ResetState.WARNING), (r.quiesced, ResetState.RESETTING),
                        (r.reset_done, ResetState.REBUILDING), (r.rebuilt, ResetState.IDLE)):
        step()
        assert r.state is state
    assert r.count == 1 and r.describe() == "IDLE FUNC (PFR)"


@pytest.mark.parametrize("state_steps", [0, 1, 2, 3])
def test_second_request_while_a_reset_runs_is_ebusy(state_steps):
    r = Reset("ixd")
    r.request(ResetType.DEV)
    for step in (r.warn, r.quiesced, r.reset_done)[:state_steps]:
        step()
    name, message = errno_of(r.request, ResetType.FUNC)
    assert name == "EBUSY" and message.startswith("a DEV reset is already running (state ")


def test_request_after_a_failed_reset_is_eio_until_recovered():
    r = Reset("ixd")
    r.request(ResetType.FUNC)
    r.warn()
    r.fail("the FW did not answer INIT")
    assert r.state is ResetState.FAILED and not r.running
    assert errno_of(r.request, ResetType.FUNC) == (
        "EIO", "the previous FUNC reset failed (the FW did not answer INIT); the function needs a PCI remove and probe")
    r.recover()
    r.request(ResetType.FUNC)


def test_reset_types_a_child_cannot_request_and_illegal_steps():
    r = Reset("ice")
    for kind in (ResetType.GLOBAL, ResetType.FLR):
        assert errno_of(r.request, kind)[0] == "EINVAL"
    r.request(ResetType.GLOBAL, from_child=False)     # the FW or the host may
    assert r.kind is ResetType.GLOBAL
    with pytest.raises(IllegalTransition, match="reset of ice: 'rebuilt' is illegal in state PENDING"):
        r.rebuilt()
    assert errno_of(Reset("x").warn)[0] == "EINVAL"   # nothing to warn about in IDLE


# ---- scheduling tree and queue space ----------------------------------------------------------

def test_tree_leaves_capacity_and_errnos():
    t = SchedTree("ixd", max_vports=2, leaves_per_tc=2)
    a = t.add_leaf(Kind.QUEUE, 0, 0, "ixd.eth.0", 0)
    b = t.add_leaf(Kind.QSET, 0, 0, "ixd.rdma.0", 7)
    assert a.teid != b.teid and t.node(b.teid) is b and b.tc == 0 and b.vport.ident == 0
    assert errno_of(t.add_leaf, Kind.QUEUE, 0, 0, "ixd.eth.0", 1) == (
        "ENOSPC", "traffic class 0 of vport 0 is full (2 leaves)")
    assert errno_of(t.add_leaf, Kind.QSET, 0, 1, "ixd.rdma.0", 8)[1] == (
        "$.payload.tc: traffic class 1 is not enabled (num_tc 1)")
    t.remove_leaf(a.teid, "ixd.eth.0")
    assert errno_of(t.add_leaf, Kind.QSET, 0, 0, "ixd.rdma.0", 7)[0] == "EEXIST"
    assert errno_of(t.remove_leaf, b.teid, "ixd.eth.0") == ("EINVAL", f"teid {b.teid} belongs to ixd.rdma.0, not ixd.eth.0")
    assert errno_of(t.remove_leaf, 999, "x") == ("EINVAL", "no scheduler node with teid 999 in ixd")
    assert errno_of(t.remove_leaf, t.root.teid, "x")[1].endswith("is a port node, not a leaf")
    t.vport(1)
    assert errno_of(t.vport, 2) == ("ENOSPC", "ixd's scheduling tree is full: 2 vports")
    assert errno_of(t.vport, 3, create=False)[0] == "EINVAL"


def test_tree_tc_change_moves_leaves_to_tc0_or_refuses():
    t = SchedTree("ixd", leaves_per_tc=2)
    t.set_num_tc(4, weights=(40, 30, 20, 10, 0, 0, 0, 0))
    assert t.describe() == {"vport0": {"tc0": 0, "tc1": 0, "tc2": 0, "tc3": 0}}
    assert [n.weight for n in t.vport(0).children] == [40, 30, 20, 10]
    q = [t.add_leaf(Kind.QUEUE, 0, tc, "e", tc) for tc in range(3)]
    moved = t.set_num_tc(2)
    assert moved == [q[2]] and q[2].tc == 0 and t.describe() == {"vport0": {"tc0": 2, "tc1": 1}}
    t.add_leaf(Kind.QUEUE, 0, 1, "e", 9)
    assert errno_of(t.set_num_tc, 1)[0] == "ENOSPC"                  # TC 0 cannot take 2 more
    assert t.num_tc == 2 and t.describe() == {"vport0": {"tc0": 2, "tc1": 2}}   # nothing moved
    assert errno_of(t.set_num_tc, 9)[0] == "EINVAL"


def test_tree_release_and_reset():
    t = SchedTree("ixd")
    for i in range(3):
        t.add_leaf(Kind.QUEUE, 0, 0, "a", i)
    t.add_leaf(Kind.QSET, 0, 0, "b", 1).shaper = object()
    assert t.release("a") == 3 and len(t.leaves()) == 1
    t.vport(0).shaper = object()
    assert t.reset() == 1 and t.leaves() == [] and t.vport(0).shaper is None


def test_queue_space_contiguous_ranges():
    qs = QueueSpace("ixd", max_txq=8, max_rxq=8)
    assert qs.alloc("a", 0, 4, 4) == (0, 0)
    assert qs.alloc("b", 0, 3, 2) == (4, 4)
    assert errno_of(qs.alloc, "c", 0, 2, 1) == ("ENOSPC", "no 2 contiguous free Tx queues left in ixd")
    assert errno_of(qs.alloc, "c", 0, 9, 1)[1] == "$.payload.num_txq: 9 above the function's 8 Tx queues"
    assert qs.alloc("a", 0, 2, 2) == (0, 0)          # a reconfiguration replaces its own range
    assert qs.alloc("c", 0, 2, 2) == (2, 2)
    assert qs.free("a") == 1 and qs.get("a", 0) is None


# ---- shapers ----------------------------------------------------------------------------------

def shaper(**kw):
    return NetshaperSet(handle=ShaperHandle(scope=ShaperScope.QUEUE, id=0), **kw)


@pytest.mark.parametrize("kw,error,fragment", [
    (dict(metric=ShaperMetric.PPS, bw_max=10**6), "EOPNOTSUPP", "bits per second only"),
    (dict(bw_max=1000), "EINVAL", "$.payload.bw_max: 1000 bps is below the hardware's minimum"),
    (dict(bw_max=200 * 10**9), "EINVAL", "exceeds the port speed 100000000000 bps"),
    (dict(bw_min=2 * 10**9, bw_max=10**9), "EINVAL", "$.payload.bw_min: 2000000000 bps is above bw_max"),
    (dict(burst=10**9), "EINVAL", "$.payload.burst"),
    (dict(priority=8), "EINVAL", "$.payload.priority: 8 out of range 0..7"),
    (dict(weight=201), "EINVAL", "$.payload.weight"),
])
def test_shaper_refusals(kw, error, fragment):
    name, message = errno_of(validate, shaper(**kw), 100 * 10**9)
    assert name == error and fragment in message


def test_shaper_guarantees_must_fit_under_the_parent():
    ok = validate(shaper(bw_min=MIN_RATE, bw_max=10**9, burst=65536, priority=1, weight=10), 10**10)
    assert (ok.bw_min, ok.bw_max, ok.burst, ok.priority, ok.weight) == (MIN_RATE, 10**9, 65536, 1, 10)
    name, message = errno_of(validate, shaper(bw_min=6 * 10**9), 10**10, siblings_min=5 * 10**9)
    assert name == "EINVAL" and "would sum to 11000000000 bps, above its parent's 10000000000 bps" in message


# ---- DCB --------------------------------------------------------------------------------------

def dcb(prio_tc, bw, tsa=None, pfc_en=0):
    return DcbConfig(ets=Ets(tc_tx_bw=bw, tc_rx_bw=bw, tc_tsa=tsa or (Tsa.ETS,) * 8, prio_tc=prio_tc),
                     pfc=Pfc(pfc_en=pfc_en))


TWO_TC = dcb((0, 0, 0, 0, 1, 1, 1, 1), (60, 40, 0, 0, 0, 0, 0, 0), pfc_en=0x10)


def test_dcb_apply_reports_changes_and_builds_the_qos():
    d = Dcb(max_tc=4, pfc_cap=2)
    assert d.num_tc == 1 and not d.apply(DEFAULT)          # same config: no hardware change
    assert d.apply(TWO_TC) and d.num_tc == 2 and d.changes == 1
    assert not d.apply(TWO_TC)
    qos = d.qos()
    assert (qos.num_tc, qos.up2tc, qos.rel_bw[:2], qos.prio_type) == (2, (0, 0, 0, 0, 1, 1, 1, 1), (60, 40), Tsa.ETS)
    assert d.describe() == {"num_tc": 2, "prio_tc": [0, 0, 0, 0, 1, 1, 1, 1], "tc_tx_bw": [60, 40], "pfc_en": "0x10"}


@pytest.mark.parametrize("cfg,fragment", [
    (dcb((0, 0, 2, 2, 0, 0, 0, 0), (50, 0, 50, 0, 0, 0, 0, 0)),
     "$.payload.ets.prio_tc: traffic classes must be contiguous from 0 (the priorities map to 0, 2)"),
    (dcb((0, 1, 2, 3, 4, 0, 0, 0), (20, 20, 20, 20, 20, 0, 0, 0)),
     "$.payload.ets.prio_tc: 5 traffic classes; the hardware has 4"),
    (dcb((0, 0, 0, 0, 1, 1, 1, 1), (60, 20, 20, 0, 0, 0, 0, 0)),
     "$.payload.ets.tc_tx_bw[2]: 20% for traffic class 2, which no priority maps to"),
    (dcb((0, 0, 0, 0, 1, 1, 1, 1), (60, 40, 0, 0, 0, 0, 0, 0), tsa=(Tsa.ETS, Tsa.CB_SHAPER) + (Tsa.ETS,) * 6),
     "$.payload.ets.tc_tsa[1]: CB_SHAPER is not supported by this hardware (STRICT or ETS)"),
    (dcb((0, 0, 0, 0, 1, 1, 1, 1), (60, 40, 0, 0, 0, 0, 0, 0), pfc_en=0x07),
     "$.payload.pfc.pfc_en: PFC on 3 priorities; the hardware supports 2"),
])
def test_dcb_refusals(cfg, fragment):
    d = Dcb(max_tc=4, pfc_cap=2)
    assert errno_of(d.apply, cfg) == ("EINVAL", fragment)
    assert d.cfg == DEFAULT and d.changes == 0


# ---- filters ----------------------------------------------------------------------------------

MAC1, MAC2, MC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), bytes.fromhex("01005e000001")


def test_mac_table():
    t = MacTable("ixd", size=3)
    assert t.set_primary(MAC1) == 0 and t.set_primary(MAC1) == 0
    assert t.set_primary(MAC2) == 0 and t.primary == MAC2          # replaces the old primary in place
    assert t.add(MAC1, MacKind.UNICAST) == 1 and t.add(MC, MacKind.MULTICAST) == 2
    assert errno_of(t.add, MAC1, MacKind.UNICAST)[0] == "EEXIST"
    assert errno_of(t.add, bytes.fromhex("020000000009"), MacKind.UNICAST) == (
        "ENOSPC", "ixd's MAC filter table is full (3 entries)")
    assert errno_of(t.add, MC, MacKind.UNICAST)[0] == "EINVAL"
    assert t.set_primary(MAC1) == 1 and 0 not in t.slots           # an existing filter becomes the primary
    assert errno_of(t.delete, MAC1)[0] == "ENOENT"                 # the primary is not a filter to delete
    assert t.delete(MC) == 2 and errno_of(t.delete, MC)[0] == "ENOENT"
    assert errno_of(t.set_primary, MC)[1] == "$.payload.addr: a multicast address cannot be the primary MAC"
    assert errno_of(t.set_primary, bytes(6))[1] == "$.payload.addr: the zero address is not valid"


def test_vlan_table():
    t = VlanTable("ixd", size=1)
    t.add(0x8100, 0)                                  # priority tagging: always, no slot
    t.add(0x8100, 10)
    assert errno_of(t.add, 0x8100, 10)[0] == "EEXIST"
    assert errno_of(t.add, 0x8100, 11)[0] == "ENOSPC"
    assert errno_of(t.add, 0x88A8, 5)[0] == "EOPNOTSUPP"
    t.delete(0x8100, 10)
    assert errno_of(t.delete, 0x8100, 10)[0] == "ENOENT"
    VlanTable("x", qinq=True).add(0x88A8, 5)


# ---- mailbox ----------------------------------------------------------------------------------

def test_mailbox_latency_timeout_and_hang():
    m = Mailbox("idpf", latency=0.02, timeout=0.1)
    assert errno_of(m.send, "CONFIG_QUEUES", 0.0) == ("ENXIO", "CONFIG_QUEUES: the FW mailbox is shut down (not initialised)")
    init = m.send("INIT", 0.0)
    assert not m.poll(init, 0.01) and m.poll(init, 0.02) and m.state is MbxState.READY
    xn = m.send("CONFIG_QUEUES", 1.0)
    assert xn.wake_in(1.0) == pytest.approx(0.02)
    assert not m.poll(xn, 1.019) and m.poll(xn, 1.02)
    m.fw_hang = True
    xn = m.send("ENABLE_QUEUES", 2.0)
    assert not m.poll(xn, 2.05) and xn.wake_in(2.05) == pytest.approx(0.05)
    assert errno_of(m.poll, xn, 2.1) == ("ETIME", "ENABLE_QUEUES: the FW did not answer within 100 ms")
    m.fw_hang = False
    short = m.send("VERSION", 3.0, timeout=0.01)      # the caller's own, shorter timeout
    assert errno_of(m.poll, short, 3.01)[0] == "ETIME"
    assert m.stats == {"sent": 4, "answered": 2, "timeouts": 2, "shutdown": 0}


def test_mailbox_hang_loses_what_was_pending_and_shutdown_fails_waiters():
    m = Mailbox("ixd", latency=0.05, timeout=1.0)
    m.poll(m.send("INIT", 0.0), 0.05)
    lost = m.send("A", 1.0)
    m.fw_hang = True
    m.fw_hang = False
    assert lost.due is None and not m.poll(lost, 1.5)
    waiting = m.send("B", 2.0)
    assert m.shutdown("FUNC reset") == 2
    assert errno_of(m.poll, waiting, 2.01) == (
        "ENXIO", "B: the FW mailbox was shut down while the request waited (FUNC reset)")
    assert errno_of(m.send, "C", 2.0)[1] == "C: the FW mailbox is shut down (FUNC reset)"
    with pytest.raises(IllegalTransition):
        m.poll(m.send("INIT", 3.0), 3.05) and m.send("INIT", 4.0)


# ---- caps, config, the whole -------------------------------------------------------------------

def test_caps_payload_and_after_reset():
    caps = CapSet(max_txq=16, max_rxq=16, features=frozenset({"dcb"}))
    p = caps.payload()
    assert (p.q_info.max_txq, p.q_info.max_rxq, p.msix_count) == (16, 16, 64) and caps.has("dcb")
    assert caps.after_reset(max_txq=8).max_txq == 8 and caps.after_reset().max_rxq == 16


def test_hw_config_from_env(monkeypatch):
    monkeypatch.setenv("AUXIPC_HW", "mbx_latency=0.2, fw_hang=1,leaves_per_tc=4")
    cfg = HwConfig.from_env(max_tc=4)
    assert (cfg.mbx_latency, cfg.fw_hang, cfg.leaves_per_tc, cfg.max_tc) == (0.2, True, 4, 4)
    for bad, fragment in (("nope=1", "'nope=1' is not key=value with a known key"),
                          ("fw_hang=maybe", "fw_hang='maybe' is not a bool"),
                          ("max_txq=lots", "max_txq='lots' is not a int")):
        assert errno_of(HwConfig.parse, bad)[1].startswith(f"AUXIPC_HW: {fragment}")


def test_hardware_release_and_wipe():
    hw = Hardware("ixd", HwConfig(qinq=True), features=("dcb",))
    assert hw.caps.has("qinq") and hw.caps.has("dcb") and hw.port_bps == 100 * 10**9
    hw.queues.alloc("e", 0, 2, 2)
    hw.sched.add_leaf(Kind.QUEUE, 0, 0, "e", 0)
    hw.sched.add_leaf(Kind.QSET, 0, 0, "r", 1)
    assert hw.release("e") == 1 and hw.queues.get("e", 0) is None
    assert hw.wipe() == 1
    assert hw.describe()["sched"] == {"vport0": {"tc0": 0}} and hw.describe()["mailbox"] == "DOWN"
