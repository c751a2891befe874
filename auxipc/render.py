"""Readable tables for people (the CLI's non-JSON output)."""

from __future__ import annotations


def table(rows: list[list[str]], head: list[str]) -> str:
    cols = [head, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([line(head), *map(line, rows)])


def render_ls(snap: dict) -> str:
    out = [f"bus epoch {snap['epoch']}  schema {snap['schema']}  pending calls {snap['pending']}", ""]
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
    peers = [[p["role"], p["name"], str(p["pid"]), str(p["inc"]), p["state"], p["schema"],
              f"{p['last_seen_ms']} ms"] for p in snap["peers"]]
    out.append(table(peers, ["ROLE", "NAME", "PID", "INC", "STATE", "SCHEMA", "LAST SEEN"]) if peers else "no peers")
    return "\n".join(out)
