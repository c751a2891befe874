"""What a pattern's run shows, derived from its records alone (nothing asserted by hand).

``facts(run)`` reads the bus's CALL and async-event records, the bind records
with the handles each side announced, and the ``PATTERN`` outcome records of
the parent and the driver, and returns one plain dict per pattern: calls per
step, and for each of the four checks (unknown events, lifetime, locking,
discoverability) what was observed, then the crash and the per-call cost.
"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

from auxipc.testing.patterns import abi
from auxipc.testing.patterns.run import Run
from proto.errno import errno_name

OPAQUE = abi.opaque_events()
CODES = {int(s.code): s.name for s in abi.EVENTS}
SCENARIO_STEPS = ("reset", "link", "dcb", "crash")     # the scenario proper; unknown and bench are probes
DISCOVERY_STEPS = ("reset", "link", "dcb")


def code_lines(path: Path) -> int:
    """Lines of code: not blank, not a comment, not part of a docstring."""
    text = path.read_text()
    doc: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                doc.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for i, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in doc)


def _detail(rec: dict) -> dict:
    return rec.get("detail") or {}


def outcome(records: list[dict], side: str, step: str, **match) -> dict:
    """The detail of the first PATTERN record of ``side`` and ``step`` (matching ``match``); {} if none."""
    for rec in records:
        d = _detail(rec)
        if (rec.get("kind") == "trace" and rec.get("action") == "PATTERN" and d.get("side") == side
                and d.get("step") == step and all(d.get(k) == v for k, v in match.items())):
            return d
    return {}


def bus_traffic(records: list[dict]) -> list[tuple[str, str, int]]:
    """(event, direction, errno) of every call and async event the bus carried, the control channel left out."""
    out = []
    for rec in records:
        if rec.get("kind") == "call":
            direction = "parent->child" if str(rec.get("from", "")).startswith("parent") else "child->parent"
            out.append((rec["event"], direction, rec.get("errno") or 0))
        elif rec.get("kind") == "event":
            name = rec["event"]
            name = CODES.get(int(name), name) if str(name).isdigit() else name
            out.append((name, rec["direction"], 0))
    return [t for t in out if t[0] not in abi.CONTROL]


def _seen(value) -> str:
    if value is None:
        return "nothing (void)"
    if isinstance(value, int) and value < 0:
        return f"-{errno_name(value)} (an int)"
    return str(value)


def unknown_fact(run: Run) -> dict:
    d = outcome(run.steps["unknown"], "parent", "unknown")
    bus = d.get("bus", [])
    refused = [b for b in bus if b["errno"] == "EOPNOTSUPP"]
    delivered = [b for b in bus if b["sent"] and not b["errno"]]
    if refused:
        text = f"caught: the bus refused {refused[0]['event']} before delivery, -EOPNOTSUPP to the sender"
    elif delivered:
        text = (f"missed: delivered as {delivered[0]['event']} and silently ignored; the sender's code "
                f"got {_seen(d.get('seen'))}")
    else:
        text = f"not sent ({_seen(d.get('seen'))})"
    return {"caught": bool(refused), "text": text}


def lifetime_fact(run: Run) -> dict:
    d = outcome(run.steps["crash"], "parent", "reset", n=2)
    bus = d.get("done_bus", [])
    stale = [b for b in bus if b["sent"] and b["errno"]]
    local = [b for b in bus if not b["sent"]]
    if stale:
        text = (f"missed by the pattern: a stale {stale[0]['event']} went out after the bus's UNBIND "
                f"(kernel: a call into the freed driver); the bus refused it, -{stale[0]['errno']}")
        caught = False
    elif local:
        text = (f"caught: not sent, the bus had said UNBIND ({local[0]['event']} refused "
                f"-{local[0]['errno']} in the parent's runtime)")
        caught = True
    else:
        text = f"not checked by the bus: the parent's own check ({_seen(d.get('done'))})"
        caught = False
    return {"caught": caught, "text": text}


def locking_fact(run: Run) -> dict:
    dcb = outcome(run.steps["dcb"], "parent", "dcb_request")
    links = [_detail(r) for r in run.steps["link"] if outcome([r], "child", "link")]
    atomic = sorted({bool(d.get("atomic")) for d in links})
    every = [r for recs in run.steps.values() for r in recs]
    lockdep = sum(1 for r in every if r.get("action") in ("LOCKDEP", "SLEEP_IN_ATOMIC", "ATOMIC_OVERRUN"))
    p2c_sync = sum(1 for step in SCENARIO_STEPS for e, direction, _ in bus_traffic(run.steps[step])
                   if direction == "parent->child" and _is_call(run, step, e))
    rtnl = bool(dcb.get("rtnl_held_by_bus"))
    return {"rtnl_declared": rtnl, "atomic_link": atomic == [True], "lockdep": lockdep, "p2c_sync": p2c_sync,
            "text": (f"DCB request delivered as an rtnl call: {'yes' if rtnl else 'no (the bus cannot tell)'}; "
                     f"link handler in atomic context: {'yes' if atomic == [True] else 'no'}; "
                     f"{p2c_sync} parent->child sync calls under device_lock; lockdep reports: {lockdep}")}


def _is_call(run: Run, step: str, event: str) -> bool:
    return any(r.get("kind") == "call" and r.get("event") == event for r in run.steps[step])


def discovery_fact(run: Run) -> dict:
    child_has = set(outcome(run.setup, "parent", "bind").get("handles", [])) - abi.CONTROL
    parent_has = set(outcome(run.setup, "child", "bind").get("handles", [])) - abi.CONTROL
    ok = 0
    for step in DISCOVERY_STEPS:
        used = bus_traffic(run.steps[step])
        if used and all(e not in OPAQUE and e in (child_has if d == "parent->child" else parent_has)
                        for e, d, _ in used):
            ok += 1
    return {"steps": ok, "of": len(DISCOVERY_STEPS), "driver_announces": sorted(child_has),
            "parent_announces": sorted(parent_has),
            "text": f"{ok}/{len(DISCOVERY_STEPS)} steps' events named in what the other side announced at bind"}


def crash_fact(run: Run) -> dict:
    recs = run.steps["crash"]
    failed = [r for r in recs if r.get("kind") == "call" and r.get("errno")]
    parent = outcome(recs, "parent", "reset", n=2)
    child = outcome(recs, "child", "crash")
    notice_ms = None
    if parent.get("t_warned") and child.get("t_kill"):
        notice_ms = round((parent["t_warned"] - child["t_kill"]) * 1000, 1)
    return {"bus_errno": failed[0]["error"] if failed else None, "event": failed[0]["event"] if failed else None,
            "seen": _seen(parent.get("warn")), "notice_ms": notice_ms}


def cost_fact(run: Run) -> dict:
    """Median and 90th percentile of every round trip timed in the parent's bench records."""
    us = sorted(x for r in run.steps["bench"] if outcome([r], "parent", "bench") for x in _detail(r)["us"])
    if not us:
        return {"median_us": None, "p90_us": None, "n": 0}
    return {"median_us": round(statistics.median(us), 1), "p90_us": round(us[max(0, int(len(us) * 0.9) - 1)], 1),
            "n": len(us)}


def calls_fact(run: Run) -> dict:
    per = {step: len(bus_traffic(run.steps[step])) for step in SCENARIO_STEPS}
    per["bind"] = len(bus_traffic(run.setup))
    per["total"] = sum(per.values())
    return per


def facts(run: Run, root: Path) -> dict:
    parent, child = run.pattern.files()
    return {"key": run.pattern.key, "title": run.pattern.title, "files": [parent, child],
            "loc": {"parent": code_lines(root / parent), "child": code_lines(root / child)},
            "calls": calls_fact(run), "unknown": unknown_fact(run), "lifetime": lifetime_fact(run),
            "locking": locking_fact(run), "discovery": discovery_fact(run), "crash": crash_fact(run),
            "cost": cost_fact(run)}
