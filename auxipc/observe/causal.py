"""A recorded trace in causal order, with every record's two ends resolved.

``causal(records)``: records sorted by their sender's stamp (``mono_ns``,
CLOCK_MONOTONIC of the process that caused them), one sender's records in its
own sequence (``src_seq``), equal stamps in recorded order. A record without a
stamp (recorded before stamps existed) keeps its place after the record before
it, so an old recording renders as it was recorded.

``resolve(records)``: ``causal``, then lifelines in two passes. The first pass
collects every participant and its role from the whole trace (registrations,
the labels of calls, the peers of trace records, devices' parents and drivers);
the second names both ends of each record in order, asking the first pass what
the record alone cannot tell (an event from a child whose registration is later
in the file, an event to a device whose driver binds later). No record gets a
lifeline that is not a participant: an async event nobody could receive ends
at the broker, where the bus dropped it. The renderers (Mermaid, HTML,
Perfetto) all draw ``resolve``'s output.
"""

from __future__ import annotations

from auxipc.observe.trace import BROKER, Lifelines

_GENERIC = ("", "?", "parent", "child")


def causal(records: list[dict]) -> list[dict]:
    """``records`` (not copied) in the order they happened; see the module's doc."""
    keyed = []
    stamp, seq = -1, 0
    for i, r in enumerate(records):
        mono = r.get("mono_ns")
        if isinstance(mono, int) and mono > 0:      # else the place of the record before it
            stamp, seq = mono, r.get("src_seq") if isinstance(r.get("src_seq"), int) else 0
        keyed.append((stamp, seq, i, r))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def _specific(ll) -> bool:
    return isinstance(ll, str) and ll.strip() not in _GENERIC and not ll.startswith("? ")


def participants(records: list[dict], snap: dict | None = None) -> Lifelines:
    """The first pass: every process the trace shows, by incarnation and by name,
    each device's parent and the driver it was ever bound to."""
    first = Lifelines()
    if snap:
        first.seed(snap)
    for r in records:
        first.learn(r)
    return first


def resolve(records: list[dict], snap: dict | None = None) -> list[dict]:
    """Copies of ``records`` in causal order, each with ``src`` and ``dst`` (lifelines)."""
    ordered = causal([dict(r) for r in records])
    hint = participants(ordered, snap)
    lines = Lifelines(hint=hint)
    if snap:
        lines.seed(snap)
    out = []
    for r in ordered:
        recorded = (r.pop("src", None), r.pop("dst", None))
        lines.annotate(r)
        for end, was in zip(("src", "dst"), recorded):
            if not _specific(r[end]):
                # what the recorder knew (a trace started on a running bus had its ls),
                # else the broker: never a lifeline no process stands behind
                r[end] = was if _specific(was) else BROKER
        out.append(r)
    return out
