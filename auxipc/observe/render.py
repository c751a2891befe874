"""Readable tables for people (the CLI's non-JSON output)."""

from __future__ import annotations


def table(rows: list[list[str]], head: list[str]) -> str:
    cols = [head, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([line(head), *map(line, rows)])


def listen_lines(snap: dict) -> list[str]:
    """The broker's TCP listeners; plain TCP is said loudly."""
    return [f"listening on {x['url']}: " + ("INSECURE plain TCP (no encryption, no authentication)"
                                            if x["security"] == "insecure" else "CURVE (admitted keys only)")
            for x in snap.get("listen", ())]


def _host(p: dict) -> str:
    return p.get("host") or "local"


def render_ls(snap: dict) -> str:
    out = [f"bus epoch {snap['epoch']}  schema {snap['schema']}  pending calls {snap['pending']}",
           *listen_lines(snap), ""]
    devs = [[d["name"], d["state"], d["bind"], d["driver"] or "-", str(d["refcount"]),
             ",".join(f"{k}x{v}" if v > 1 else k for k, v in d["holders"].items()) or "-",
             str(sum(1 for e in d["events"] if e["deliverable"])) + "/" + str(len(d["events"]))]
            for d in snap["devices"]]
    out.append(table(devs, ["DEVICE", "STATE", "BIND", "DRIVER", "REFS", "HOLDERS", "EVENTS"])
               if devs else "no devices")
    out.append("")
    drvs = [[d["name"], ",".join(d["id_table"]), ",".join(d["bound"]) or "-", d["peer"]] for d in snap["drivers"]]
    out.append(table(drvs, ["DRIVER", "ID_TABLE", "BOUND", "PROCESS"]) if drvs else "no drivers")
    out.append("")
    peers = [[p["role"], p["name"], _host(p), str(p["pid"]), str(p["inc"]), p["state"], p["schema"],
              f"{p['last_seen_ms']} ms"] for p in snap["peers"]]
    out.append(table(peers, ["ROLE", "NAME", "HOST", "PID", "INC", "STATE", "SCHEMA", "LAST SEEN"])
               if peers else "no peers")
    out.extend(_warning_lines(snap))
    return "\n".join(out)


def _warning_lines(snap: dict) -> list[str]:
    """What the bus reported as the kernel would warn (a hung task, devices left behind)."""
    found = snap.get("warnings") or []
    return ["", f"warnings ({len(found)}):", *(f"  WARN {w['kind']}: {w['message']}" for w in found)] if found else []


def _events_lines(events: list[dict]) -> list[str]:
    """The negotiated contract of one device: per direction, the events the receiving
    side handles (``~`` async); the rest are counted (``ls --json`` lists them all)."""
    out = []
    for direction, arrow in (("parent->child", "↓ to child "), ("child->parent", "↑ to parent"), ("both", "↕ both ways")):
        evs = [e for e in events if e["direction"] == direction]
        ok = [e["event"] + ("~" if e["delivery"] == "async" else "") for e in evs if e["deliverable"]]
        if evs:
            rest = len(evs) - len(ok)
            out.append(f"{arrow}: {' '.join(ok) or '-'}" + (f"  (+{rest} not handled)" if rest else ""))
    return out


def _branch(lines: list[str], items: list, render) -> None:
    for i, item in enumerate(items):
        last = i == len(items) - 1
        head, *rest = render(item)
        lines.append(("└─ " if last else "├─ ") + head)
        lines.extend(("   " if last else "│  ") + r for r in rest)


def render_tree(snap: dict) -> str:
    """``auxipc ls``: parent process -> its devices -> bound driver (and its process),
    refcount, state, negotiated events; then the child processes and their drivers."""
    peers = {f"{p['role']} {p['name']}[{p['pid']}]#{p['inc']}": p for p in snap["peers"]}
    drivers = {d["name"]: d for d in snap["drivers"]}
    out = [f"bus epoch {snap['epoch']}  schema {snap['schema']}  pending calls {snap['pending']}",
           *listen_lines(snap)]

    def peer_head(label: str) -> str:
        p = peers.get(label)
        if p is None:
            return f"{label} (gone)"
        slow = f", {p['slow_calls']} slow calls" if p.get("slow_calls") else ""
        where = "" if _host(p) == "local" else f"  on {_host(p)}"
        return (f"{p['role']} {p['name']}{where}  pid {p['pid']} inc {p['inc']}  {p['state']}  schema {p['schema']}  "
                f"seen {p['last_seen_ms']} ms ago{slow}")

    def device(d: dict) -> list[str]:
        holders = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in d["holders"].items()) or "-"
        lock = f", locked by {d['locked_by']}" + (f" ({d['queued']} queued)" if d["queued"] else "") \
            if d.get("locked_by") else ""
        alias = f"  (auxiliary:{d['match']})" if d.get("match") else ""
        head = f"{d['name']}{alias}  {d['state']}, {d['bind']}  refs {d['refcount']} [{holders}]{lock}"
        rest = []
        if d["driver"]:
            drv = drivers.get(d["driver"])
            rest.append(f"└─ driver {d['driver']}" + (f" ← {drv['peer']}" if drv else ""))
        else:
            rest.append("└─ no driver")
        ok = sum(1 for e in d["events"] if e["deliverable"])
        rest.append(f"   events {ok}/{len(d['events'])} deliverable (~ async)")
        rest.extend(f"     {line}" for line in _events_lines(d["events"]))
        if d.get("last_error"):
            rest.append(f"   last error: {d['last_error']}")
        if d.get("hung"):
            rest.append(f"   hung: {d['hung']}")
        return [head, *rest]

    roots: list[tuple[str, list]] = []
    parent_labels = [lbl for lbl, p in peers.items() if p["role"] == "parent"]
    for lbl in parent_labels + sorted({d["parent"] for d in snap["devices"]} - set(parent_labels)):
        roots.append(("parent", [lbl, [d for d in snap["devices"] if d["parent"] == lbl]]))
    for lbl, p in peers.items():
        if p["role"] != "parent":
            roots.append(("child", [lbl, [d for d in snap["drivers"] if d["peer"] == lbl]]))

    def root(item) -> list[str]:
        kind, (label, children) = item
        lines = [peer_head(label)]
        if kind == "parent":
            if not children:
                lines.append("└─ no devices")
            _branch(lines, children, device)
        else:
            _branch(lines, children, lambda drv: [
                f"driver {drv['name']}  id_table {','.join(drv['id_table'])}  bound: {', '.join(drv['bound']) or '-'}",
                f"   handles: {' '.join(drv['handles']) or '-'}"])
            if not children:
                lines.append("└─ no drivers")
        return lines

    if not roots:
        out.append("(no processes on the bus)")
    _branch(out, roots, root)
    out.extend(_warning_lines(snap))
    return "\n".join(out)
