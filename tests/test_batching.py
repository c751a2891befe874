"""Async events batched per device (auxipc/runtime/publishing.py), against the in-memory
transport (auxipc/runtime/memory.py): what leaves, when and in which order. The wire form is checked by decoding it, as a
receiver would (proto/envelope.py)."""

from __future__ import annotations

import pytest

from auxipc.faults import FaultRule
from auxipc.runtime.memory import MemoryTransport
from auxipc.runtime.publishing import BATCH_EVENTS
from parent.runtime import ParentModel, ParentRuntime
from proto import envelope as E
from proto.events import CATALOG, Event, FwEvent, FwEventKind, LinkChange

LINK, FW = CATALOG.lookup(Event.LINK_CHANGE), CATALOG.lookup(Event.FW_EVENT)
ETH, RDMA = b"C:tb.eth.0", b"C:tb.rdma.0"


class Model(ParentModel):
    modname = "tb"


@pytest.fixture
def rt():
    tr = MemoryTransport()
    rt = ParentRuntime(Model(), transport=tr)
    tr.connect(b"p:tb")
    rt.inc, rt.epoch = 3, 9
    yield rt
    tr.disconnect()
    rt.close()


def messages(rt, topic: bytes) -> list[tuple[E.AsyncEvent, list]]:
    out = []
    for frames in rt.tr.published:
        if frames[0] == topic:
            msg, payload = E.decode(frames[1:])
            out.append((msg, E.decode_events(payload)))
    return out


def test_a_burst_leaves_in_full_batches_in_order(rt):
    seqs = [rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=i)) for i in range(2 * BATCH_EVENTS + 2)]
    assert seqs == list(range(1, 2 * BATCH_EVENTS + 3))
    assert len(rt.tr.published) == 2                 # two full batches; two events still queued
    rt.flush_events()
    got = messages(rt, ETH)
    assert [len(items) // 2 for _, items in got] == [BATCH_EVENTS, BATCH_EVENTS, 2]
    assert [m.seq for m, _ in got] == [1, BATCH_EVENTS + 1, 2 * BATCH_EVENTS + 1]
    assert all((m.dev, m.inc, m.epoch) == (1, 3, 9) for m, _ in got)
    assert [p["speed_mbps"] for _, items in got for p in items[1::2]] == list(range(2 * BATCH_EVENTS + 2))
    assert rt.stats["async_sent"] == 2 * BATCH_EVENTS + 2


def test_devices_queue_apart_each_with_its_own_sequence(rt):
    for i in range(3):
        rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=i))
        rt.publish_event(2, RDMA, FW, FwEvent(kind=FwEventKind.HEALTH, state=i))
    assert rt.tr.published == []                     # nothing leaves before the runtime waits
    rt.flush_events()
    [(eth, eth_items)] = messages(rt, ETH)
    [(rdma, rdma_items)] = messages(rt, RDMA)
    assert (eth.seq, eth_items[0::2]) == (1, [int(Event.LINK_CHANGE)] * 3)
    assert (rdma.seq, rdma_items[0::2], rdma.dev) == (1, [int(Event.FW_EVENT)] * 3, 2)


def test_a_faulted_event_goes_alone_after_what_was_queued(rt):
    """A message fault applies to one event: the queue ahead of it leaves first, the
    faulted event travels alone (here dropped, so a receiver sees the gap), and the
    next events queue again with the following sequence numbers."""
    rt.faults.set([FaultRule(kind="message", target="*", action="drop", event="FW_EVENT")])
    rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=1))
    rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=2))
    assert rt.publish_event(1, ETH, FW, FwEvent(kind=FwEventKind.HEALTH)) == 3
    rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=4))
    rt.flush_events()
    got = messages(rt, ETH)
    assert [(m.seq, len(items) // 2) for m, items in got] == [(1, 2), (4, 1)]
    assert rt.stats["async_dropped_by_fault"] == 1
    assert [frames[0] for frames in rt.tr.published].count(b"trace") == 1   # the FAULT record


def test_a_runtime_without_a_broker_counts_what_it_could_not_send(rt):
    rt.publish_event(1, ETH, LINK, LinkChange(up=True, speed_mbps=1))
    rt.publisher.disconnected()
    rt.flush_events()
    assert rt.tr.published == [] and rt.stats["async_dropped_disconnect"] == 1
