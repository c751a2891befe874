"""A recorded trace as Chrome trace-event JSON, which the Perfetto UI, chrome://tracing
and catapult's trace viewer open (``auxipc trace render FILE --perfetto OUT.json``).

Pure: records in (put in causal order and their lifelines resolved by
``causal.resolve``), one JSON object out, ``{"traceEvents": [...], "displayTimeUnit": "ms"}``.

The mapping, one process (pid) per lifeline: the broker, each parent, each child,
in order of appearance; the real pid is in the process name when the trace saw
the process register.

- A sync call (``call`` record; its ``ts`` is when the broker had the answer and ``us``
  the latency the broker measured, request sent to answer) is a complete slice
  ("X") on the caller, the broker and the callee over the same interval, with
  errno, error and latency in ``args``; two flow arrows ("s" then "f", one id
  each) go caller -> broker -> callee.
- An async event is an instant ("i") on the sender, the broker and the receiver
  (no flow arrows: the importer binds a flow to a slice that encloses it, and an
  instant encloses nothing).
- Bus notifications (REGISTER, ADD, BIND, ...) are instants on the process they
  concern; a parent's hardware report (``HW <what>``) an instant on that parent;
  faults and other trace records instants on the broker.
- Lock waits (``LOCK_WAIT`` records a runtime reports when it got a lock: lock,
  task, µs from asking to holding) are slices on the waiting process's "locks"
  threads; lockdep reports (``LOCKDEP``: kind and the chains) slices on the
  broker's "lockdep" thread.

Slices on one thread must nest or follow each other, so concurrent calls (or
lock waits) of one process go on separate threads ("calls 1", "calls 2", ...):
each takes the first thread free at its start. Metadata events ("M") name every process and
thread and fix their order. Timestamps are microseconds from the first record.
"""

from __future__ import annotations

import json

from auxipc.observe.causal import resolve
from auxipc.observe.trace import BROKER, is_hw, lifeline

# thread ids within a process: the fixed threads first, then the lanes of calls and of lock waits
MAIN, LOCKDEP, LANES, LOCK_LANES = 1, 3, 10, 1000
FLOW_CAT = "flow"


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


class _Builder:
    def __init__(self, records: list[dict]):
        self.records = resolve(records)
        self.events: list[dict] = []
        self.pids: dict[str, int] = {BROKER: 1}
        self.real_pid: dict[str, int] = {}
        self.threads: dict[tuple[int, int], str] = {}
        self.lanes: dict[tuple[int, int], list[float]] = {}   # (pid, first tid) -> each lane's last end
        self.flow_id = 0
        starts = [self._start(r) for r in self.records]
        self.t0 = min(starts, default=0.0)

    # ---- tracks --------------------------------------------------------------------

    @staticmethod
    def _start(r: dict) -> float:
        ts = float(r.get("ts") or 0.0)
        if r.get("kind") == "call" or r.get("action") == "LOCK_WAIT":
            us = (r.get("us") if r.get("kind") == "call" else (r.get("detail") or {}).get("us")) or 0
            return ts - us / 1e6
        return ts

    def pid(self, ll: str) -> int:
        ll = ll or BROKER
        if ll not in self.pids:
            self.pids[ll] = len(self.pids) + 1
        return self.pids[ll]

    def thread(self, pid: int, tid: int, name: str) -> int:
        self.threads.setdefault((pid, tid), name)
        return tid

    def lane(self, pid: int, start: float, end: float, base: int = LANES, label: str = "calls") -> int:
        """The first thread of ``pid``'s lanes at ``base`` free at ``start`` (then busy until ``end``)."""
        ends = self.lanes.setdefault((pid, base), [])
        for i, busy_until in enumerate(ends):
            if busy_until < start:      # touching slices would make the flow's enclosing slice ambiguous
                ends[i] = end
                return self.thread(pid, base + i, f"{label} {i + 1}")
        ends.append(end)
        return self.thread(pid, base + len(ends) - 1, f"{label} {len(ends)}")

    def main(self, pid: int) -> int:
        return self.thread(pid, MAIN, "bus" if pid == 1 else "main")

    # ---- events --------------------------------------------------------------------

    def ts(self, seconds: float) -> float:
        return _us(seconds - self.t0)

    def emit(self, ph: str, name: str, pid: int, tid: int, ts: float, **extra) -> dict:
        ev = {"name": name, "ph": ph, "ts": ts, "pid": pid, "tid": tid, **extra}
        self.events.append(ev)
        return ev

    def flow(self, name: str, a: tuple[int, int], b: tuple[int, int], ts: float) -> None:
        """An arrow from the slice enclosing ``ts`` on thread ``a`` to the one on ``b``."""
        self.flow_id += 1
        self.emit("s", name, *a, ts, cat=FLOW_CAT, id=self.flow_id)
        self.emit("f", name, *b, ts, cat=FLOW_CAT, id=self.flow_id, bp="e")

    def call(self, r: dict) -> None:
        us = r.get("us") or 0
        end = float(r.get("ts") or 0.0)
        start = end - us / 1e6
        name = r.get("event") or "?"
        args = {"dev": r.get("dev"), "errno": r.get("errno") or 0, "error": r.get("error"), "latency_us": us,
                "from": r.get("from"), "to": r.get("to")}
        ends = []
        # a call served on the direct lane never crossed the broker: no broker slice
        hops = (("caller", r["src"]), ("callee", r["dst"])) if r.get("lane") else \
            (("caller", r["src"]), ("broker", BROKER), ("callee", r["dst"]))
        if r.get("lane"):
            args["lane"] = True
        for role, ll in hops:
            pid = self.pid(ll)
            tid = self.lane(pid, start, end)
            label = name if role != "callee" else f"{name} handler"
            self.emit("X", label, pid, tid, self.ts(start), dur=_us(us / 1e6), cat=f"call,{role}", args=args)
            ends.append((pid, tid))
        t = self.ts(start)
        for a, b in zip(ends, ends[1:]):
            self.flow(name, a, b, t)

    def async_event(self, r: dict) -> None:
        name, t = r.get("event") or "?", self.ts(float(r.get("ts") or 0.0))
        args = {"dev": r.get("dev"), "direction": r.get("direction"), "seq": r.get("seq"),
                "payload": r.get("payload")}
        for role, ll in (("sender", r["src"]), ("broker", BROKER), ("receiver", r["dst"])):
            pid = self.pid(ll)
            self.emit("i", name, pid, self.main(pid), t, s="t", cat=f"event,{role}", args=args)

    def note(self, r: dict) -> None:
        action, t = str(r.get("action") or r.get("kind") or "?"), self.ts(float(r.get("ts") or 0.0))
        detail = r.get("detail") if isinstance(r.get("detail"), dict) else {}
        if action == "LOCKDEP":
            self.emit("X", f"lockdep: {detail.get('kind', '?')}", 1, self.thread(1, LOCKDEP, "lockdep"), t,
                      dur=0, cat="lockdep", args={"dev": r.get("dev"), **detail})
            return
        if action == "LOCK_WAIT":
            us = detail.get("us") or 0
            end = float(r.get("ts") or 0.0)
            pid = self.pid(lifeline(str(detail.get("peer", "")).split("#")[0]) or BROKER)
            tid = self.lane(pid, end - us / 1e6, end, LOCK_LANES, "locks")
            self.emit("X", f"wait {detail.get('lock', '?')}", pid, tid, self.ts(end - us / 1e6),
                      dur=_us(us / 1e6), cat="lock", args={"dev": r.get("dev"), **detail})
            return
        if is_hw(r):
            ll = lifeline(str(detail.get("peer", "")).split("#")[0]) or r["src"]
            pid = self.pid(ll)
            self.emit("i", action, pid, self.main(pid), t, s="t", cat="hw", args=detail)
            return
        if r.get("kind") == "bus" and r.get("action") in ("REGISTER", "UNREGISTER", "PEER_DEAD"):
            if detail.get("pid") and r["src"] != BROKER:
                self.real_pid.setdefault(r["src"], detail["pid"])
        ll = r["src"] if r["src"] != BROKER else r["dst"]
        pid = self.pid(ll)
        what = " ".join(x for x in (action, r.get("dev") or "", r.get("driver") or "") if x)
        self.emit("i", what, pid, self.main(pid), t, s="t", cat=r.get("kind") or "trace",
                  args={"detail": detail, "seq": r.get("seq"), "from": r["src"], "to": r["dst"]})

    def build(self) -> dict:
        seen_lockdep: set[str] = set()
        # by start time: the call lanes are handed out greedily, which needs it (a call's
        # record comes at its end, an async event's at its start)
        for r in sorted(self.records, key=self._start):
            for ll in (r["src"], r["dst"]):
                self.pid(ll)
            kind = r.get("kind")
            if r.get("action") == "LOCKDEP":       # published on both the bus and the trace topic: once
                key = json.dumps(r.get("detail"), sort_keys=True, default=str)
                if key in seen_lockdep:
                    continue
                seen_lockdep.add(key)
            if kind == "call":
                self.call(r)
            elif kind == "event":
                self.async_event(r)
            else:
                self.note(r)
        meta = []
        for ll, pid in self.pids.items():
            label = ll if ll not in self.real_pid else f"{ll} (pid {self.real_pid[ll]})"
            meta += [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}},
                     {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                      "args": {"sort_index": self._order(ll, pid)}}]
            self.main(pid)
        for (pid, tid), name in sorted(self.threads.items()):
            meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}},
                     {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}]
        return {"traceEvents": meta + self.events, "displayTimeUnit": "ms",
                "otherData": {"generator": "auxipc trace render --perfetto", "records": len(self.records)}}

    @staticmethod
    def _order(ll: str, pid: int) -> int:
        """Parents above the broker above children, as the sequence diagram draws them."""
        band = 0 if ll.startswith("parent") else 1 if ll == BROKER else 2
        return band * 1000 + pid


def to_trace_events(records: list[dict]) -> dict:
    """The Chrome trace-event JSON object of ``records``."""
    return _Builder(records).build()


def dumps(records: list[dict]) -> str:
    return json.dumps(to_trace_events(records), separators=(",", ":"), default=str) + "\n"
