"""Draw a recorded trace: a Mermaid sequence diagram and a small HTML timeline.

Lifelines: the parents (in order of appearance), the broker, the children.
A sync call is drawn through the broker and back with its errno and latency;
an async event as open arrows (no result: async events have none); bus
notifications as arrows between the process concerned and the broker; a
parent's hardware change (and any trace record a runtime published about
itself) as a note over that process, with its details; any other action
(faults, recoveries) as a note over the broker. Records are drawn in causal
order, their lifelines resolved in two passes (``observe.causal``).

The Mermaid text renders on GitHub inside a ```` ```mermaid ```` block of a
``.md`` file (``to_markdown``) or as a ``.mmd`` file on its own.
"""

from __future__ import annotations

import html
import json

from auxipc.observe.causal import resolve
from auxipc.observe.trace import BROKER, is_hw, summary

# Mermaid: '#' starts an entity code and ';' ends a statement; '<'/'>' may be taken as HTML.
_ESC = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", '"': "#quot;", "\n": " ", "\r": " "}


def _esc(text: str) -> str:
    return "".join(_ESC.get(ch, ch) for ch in str(text))


def _participants(records: list[dict]) -> list[str]:
    seen = []
    for r in records:
        for ll in (r["src"], r["dst"]):
            if ll not in seen:
                seen.append(ll)
    parents = [ll for ll in seen if ll.startswith("parent")]
    children = [ll for ll in seen if ll.startswith("child")]
    others = [ll for ll in seen if ll not in parents and ll not in children and ll != BROKER]
    return [*parents, BROKER, *others, *children]


def _annotated(records: list[dict]) -> list[dict]:
    # A lock wait is a duration, not a message between lifelines: the Perfetto export draws it.
    return [r for r in resolve(records) if r.get("action") != "LOCK_WAIT"]


def hw_text(r: dict, limit: int = 60) -> str:
    """A hardware change in a few words: ``hw link speed_mbps=100000 up=true``."""
    d = {k: v for k, v in (r.get("detail") or {}).items() if k not in ("peer", "task")}
    what, dev = d.pop("what", "?"), d.pop("dev", "")
    body = " ".join(f"{k}={v if isinstance(v, str) else summary(v, limit)}" for k, v in d.items())
    return " ".join(x for x in ("hw", str(what), str(dev), body) if x)


def _note_text(r: dict) -> str:
    kind = r.get("kind")
    if is_hw(r):
        return hw_text(r)
    if kind in ("bus", "trace"):
        text = _bus_text(r)
        detail = r.get("detail") or {}
        if kind == "trace" and r.get("src") != BROKER:      # a runtime's own record: what it said
            extra = {k: v for k, v in detail.items() if k not in ("peer", "task")}
            text += (" " + summary(extra, 60)) if extra else ""
        return text
    return f"{kind}: {summary(r, 60)}"


def _bus_text(r: dict) -> str:
    detail = r.get("detail") or {}
    what = " ".join(x for x in (r.get("action", "?"), r.get("dev") or "",
                                f"({r['driver']})" if r.get("driver") and r.get("dev") else r.get("driver") or "")
                    if x)
    extra = {k: v for k, v in detail.items() if k in ("name", "reason", "errno", "error", "signal", "restarts")
             and not (k == "name" and r.get("action") in ("REGISTER", "UNREGISTER", "PEER_DEAD"))}
    return what + (" " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


def to_mermaid(records: list[dict], title: str | None = None) -> str:
    """The Mermaid ``sequenceDiagram`` text of ``records`` (annotated here if needed)."""
    recs = _annotated(records)
    ids = {}
    out = ["sequenceDiagram"]
    if title:
        out.append(f"    title {_esc(title)}")
    np = nc = no = 0
    for ll in _participants(recs) if recs else [BROKER]:
        if ll == BROKER:
            pid = "B"
        elif ll.startswith("parent"):
            np += 1
            pid = f"P{np}"
        elif ll.startswith("child"):
            nc += 1
            pid = f"C{nc}"
        else:
            no += 1
            pid = f"X{no}"
        ids[ll] = pid
        out.append(f"    participant {pid} as {_esc(ll)}")
    for r in recs:
        src, dst = ids[r["src"]], ids[r["dst"]]
        kind = r.get("kind")
        if kind == "call":
            errno = r.get("errno") or 0
            us = r.get("us")
            result = ("0" if not errno else f"{errno} {r.get('error') or ''}".strip()) + (
                f" ({us / 1000:.2f} ms)" if isinstance(us, (int, float)) else "")
            back = "--x" if errno else "-->>"
            ev = f"{r.get('event', '?')} {r.get('dev', '')}".strip()
            if r.get("lane"):      # served on the direct lane: the broker was not on the path
                out += [f"    {src}->>{dst}: {_esc(ev)} (lane)", f"    {dst}{back}{src}: {_esc(result)}"]
            else:
                out += [f"    {src}->>B: {_esc(ev)}",
                        f"    B->>{dst}: {_esc(r.get('event', '?'))}",
                        f"    {dst}{back}B: {_esc(result)}",
                        f"    B{back}{src}: {_esc(result)}"]
        elif kind == "event":
            text = f"{r.get('event', '?')} {r.get('dev', '')} {summary(r.get('payload'), 60)}"
            out.append(f"    {src}-)B: {_esc(text)}")
            out.append(f"    B-){dst}: {_esc(r.get('event', '?'))} (async)" if dst != "B" else
                       f"    Note over B: {_esc(r.get('event', '?'))}: no receiver bound, dropped")
        elif kind == "bus" and r.get("action") in ("PEER_DEAD",):
            out.append(f"    {src}-xB: {_esc(_bus_text(r))}")
        elif kind == "bus" and src != dst:
            out.append(f"    {src}->>{dst}: {_esc(_bus_text(r))}")
        else:
            out.append(f"    Note over {src}: {_esc(_note_text(r))}")
    return "\n".join(out) + "\n"


def to_markdown(records: list[dict], title: str | None = None) -> str:
    head = f"# {title}\n\n" if title else ""
    return f"{head}```mermaid\n{to_mermaid(records, title=None)}```\n"


_KIND_COLOR = {"bus": "#2b6cb0", "call": "#2f855a", "event": "#b7791f"}


def to_html(records: list[dict], title: str = "auxipc trace") -> str:
    """A self-contained HTML timeline: one column per lifeline, one row per record."""
    recs = _annotated(records)
    cols = _participants(recs) if recs else [BROKER]
    rows = []
    for r in recs:
        kind = r.get("kind", "?")
        if kind == "call":
            errno = r.get("errno") or 0
            us = r.get("us")
            label = (f"{r.get('event')} = {errno or 0}{' ' + (r.get('error') or '') if errno else ''}"
                     + (f" ({us / 1000:.2f} ms)" if isinstance(us, (int, float)) else "")
                     + (" on the direct lane" if r.get("lane") else ""))
        elif kind == "event":
            label = f"{r.get('event')} (async) {summary(r.get('payload'), 60)}"
        else:
            label = _note_text(r)
        a, b = cols.index(r["src"]), cols.index(r["dst"])
        lo, hi = min(a, b), max(a, b)
        arrow = "→" if b > a else "←" if b < a else "•"
        cells = []
        for i in range(len(cols)):
            if i == lo:
                span = hi - lo + 1
                bad = " bad" if (kind == "call" and r.get("errno")) or r.get("action") in ("PEER_DEAD",) else ""
                cells.append(f'<td colspan="{span}" class="{html.escape(kind)}{bad}">{arrow} '
                             f'{html.escape(label)}</td>')
            elif lo < i <= hi:
                continue
            else:
                cells.append("<td></td>")
        ts = r.get("ts")
        stamp = f"+{ts:.3f}s" if isinstance(ts, (int, float)) else ""
        rows.append(f'<tr title="{html.escape(json.dumps(r, default=str))}"><th>{stamp}</th>{"".join(cells)}</tr>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    css = "".join(f"td.{k}{{background:{c}22;border-left:3px solid {c}}}" for k, c in _KIND_COLOR.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font:13px/1.4 ui-monospace,monospace;margin:1em}} table{{border-collapse:collapse}}
th,td{{padding:2px 8px;border-bottom:1px solid #eee;white-space:nowrap}} thead th{{position:sticky;top:0;background:#fff}}
{css} td.bad{{background:#c5303022;border-left:3px solid #c53030}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(recs)} records. Hover a row for the full record.</p>
<table><thead><tr><th>time</th>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
