"""Trace records: who talks to whom, filters, text and udev-style formatting, JSON lines.

Records come from ``watch.Watcher`` (kinds ``bus``, ``call``, ``event``, and
``trace`` for faults and reports published on the trace topic). This
module adds, without any I/O of its own:

- ``Lifelines``: follows the record stream (and optionally an ``ls`` snapshot)
  to name the sender and receiver of each record as lifelines — ``parent ixd``,
  ``broker``, ``child idpf_eth`` — stored as ``src`` and ``dst``. A recorded
  trace is enough to draw a sequence diagram from. A trace record a runtime
  published about itself (a hardware change, a lock wait) stands on its lifeline.
  ``observe.causal`` sorts a recorded trace and resolves it in two passes.
- ``Filter``: ``--device``, ``--event``, ``--peer`` (globs, repeatable; OR within
  one option, AND across options).
- ``format_trace``: one line per record for people; unknown actions and kinds
  (faults, recoveries) are printed generically.
- ``format_udev``: ``udevadm monitor`` style lines for bus notifications.
- ``dump``/``load``: JSON lines.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field

from proto.names import match_name

BROKER = "broker"

# bus action -> (sender, receiver) as lifeline kinds: "peer" (the registering
# process), "parent" / "child" (of the device or driver), or the broker.
_ROUTES = {
    "REGISTER": ("peer", BROKER), "UNREGISTER": ("peer", BROKER), "PEER_DEAD": ("peer", BROKER),
    "DRIVER_ADD": ("child", BROKER), "DRIVER_REMOVE": ("child", BROKER),
    "ADD": ("parent", BROKER), "REMOVE": ("parent", BROKER), "RELEASE": (BROKER, "parent"),
    "BIND": (BROKER, "child"), "UNBIND": (BROKER, "child"),
    "PROBE_DEFER": (BROKER, "child"), "PROBE_FAILED": (BROKER, "child"),
}


def lifeline(label: str | None) -> str:
    """``parent ixd[5870]#1`` (or ``parent ixd#1``) -> ``parent ixd`` (a restarted process keeps its lifeline)."""
    return re.sub(r"(\[\d+\])?#\d+$", "", str(label or "")).strip()


def _inc_of(label) -> int | None:
    m = re.search(r"#(\d+)$", str(label or ""))
    return int(m.group(1)) if m else None


@dataclass
class Lifelines:
    """Names the two ends of every record, learning the bus from the stream itself."""

    by_inc: dict = field(default_factory=dict)        # incarnation -> lifeline
    by_name: dict = field(default_factory=dict)       # peer name -> lifeline
    dev_parent: dict = field(default_factory=dict)    # device -> parent lifeline
    dev_driver: dict = field(default_factory=dict)    # device -> driver name
    drv_child: dict = field(default_factory=dict)     # driver -> child lifeline
    order: list = field(default_factory=list)         # lifelines in order of appearance
    dev_bound: dict = field(default_factory=dict)     # device -> the first driver it was bound to
    hint: Lifelines | None = None                     # the whole trace's participants (causal.resolve)

    def seed(self, snap: dict) -> None:
        """Learn what an ``ls`` snapshot knows (for a trace started on a running bus)."""
        for p in snap.get("peers", []):
            self._peer(p["role"], p["name"], p.get("inc"))
        for d in snap.get("drivers", []):
            self.drv_child[d["name"]] = lifeline(d["peer"])
        for d in snap.get("devices", []):
            self.dev_parent[d["name"]] = lifeline(d["parent"])
            if d.get("driver"):
                self.dev_driver[d["name"]] = d["driver"]

    def learn(self, rec: dict) -> None:
        """The first pass of ``causal.resolve``: learn who takes part, without naming ends."""
        kind, detail = rec.get("kind"), rec.get("detail") if isinstance(rec.get("detail"), dict) else {}
        if kind == "bus":
            action, dev, drv = rec.get("action"), rec.get("dev"), rec.get("driver")
            if action in ("REGISTER", "UNREGISTER", "PEER_DEAD") and detail.get("role"):
                self._peer(detail["role"], detail.get("name"), detail.get("inc"))
            if action == "ADD" and detail.get("parent"):
                self.dev_parent.setdefault(dev, lifeline(detail["parent"]))
            if action == "BIND" and drv and dev:
                self.dev_bound.setdefault(dev, drv)
        elif kind == "call":
            for label in (rec.get("from"), rec.get("to")):
                if lifeline(label).startswith(("parent ", "child ")):
                    self._label(label)
        elif kind == "trace" and lifeline(detail.get("peer")).startswith(("parent ", "child ")):
            self._label(detail["peer"])

    def _label(self, label: str) -> None:
        """Learn a process from its label, ``role name[pid]#inc``."""
        role, _, name = lifeline(label).partition(" ")
        self._peer(role, name, _inc_of(label))

    def _peer(self, role, name, inc=None) -> str:
        known = self.by_name.get(name) or (self.hint.by_name.get(name) if self.hint else None)
        ll = f"{role} {name}" if role else known or f"? {name}"
        if name:
            self.by_name[name] = ll
        if inc is not None:
            self.by_inc[inc] = ll
        return ll

    def _child_of_driver(self, driver: str) -> str:
        if driver in self.drv_child:
            return self.drv_child[driver]
        # a child process is named after its drivers ("a+b"); else the last child seen
        for names in (self.by_name, self.hint.by_name if self.hint else {}):
            for name, ll in reversed(list(names.items())):
                if ll.startswith("child ") and driver in name.split("+"):
                    return ll
        children = [ll for ll in self.by_name.values() if ll.startswith("child ")]
        if not children and self.hint is not None:
            children = [ll for ll in self.hint.by_name.values() if ll.startswith("child ")]
        return children[-1] if children else "child"

    def _sender(self, inc) -> str | None:
        return self.by_inc.get(inc) or (self.hint.by_inc.get(inc) if self.hint else None)

    def _parent_of(self, dev: str) -> str | None:
        return self.dev_parent.get(dev) or (self.hint.dev_parent.get(dev) if self.hint else None)

    def _driver_of(self, dev: str, stamped: bool) -> str | None:
        """The driver bound to ``dev`` now; for a record without a stamp (its place in
        the file may be wrong) the second pass's guess: the first driver the trace binds."""
        drv = self.dev_driver.get(dev)
        if drv is None and not stamped and self.hint is not None:
            drv = self.hint.dev_bound.get(dev)
        return drv

    def _end(self, kind: str, rec: dict) -> str:
        if kind == BROKER:
            return BROKER
        dev, drv, detail = rec.get("dev") or "", rec.get("driver") or "", rec.get("detail") or {}
        if kind == "peer":
            return self._peer(detail.get("role"), detail.get("name"), detail.get("inc"))
        if kind == "parent":
            return self._parent_of(dev) or lifeline(detail.get("parent")) or "parent"
        drv = drv or self.dev_driver.get(dev, "")
        return self._child_of_driver(drv) if drv else "child"

    def annotate(self, rec: dict) -> dict:
        """Add ``src`` and ``dst`` (lifelines) to ``rec`` (in place) and learn from it."""
        kind = rec.get("kind")
        if kind == "bus":
            action, dev, drv, detail = rec.get("action"), rec.get("dev"), rec.get("driver"), rec.get("detail") or {}
            if action == "ADD" and detail.get("parent"):
                self.dev_parent[dev] = lifeline(detail["parent"])
            if action == "DRIVER_ADD" and drv:
                self.drv_child[drv] = self._child_of_driver(drv)
            if action == "BIND" and drv:
                self.dev_driver[dev] = drv
            route = _ROUTES.get(action)
            if route:
                rec.setdefault("src", self._end(route[0], rec))
                rec.setdefault("dst", self._end(route[1], rec))
            else:   # faults, recoveries, anything newer than this module: on the broker
                rec.setdefault("src", BROKER)
                rec.setdefault("dst", BROKER)
            if action == "DRIVER_REMOVE":
                self.drv_child.pop(drv, None)
            if action in ("UNBIND", "REMOVE") and dev:
                self.dev_driver.pop(dev, None)
        elif kind == "call":
            rec.setdefault("src", lifeline(rec.get("from")) or "?")
            rec.setdefault("dst", lifeline(rec.get("to")) or "?")
        elif kind == "event":
            dev = rec.get("dev", "")
            # an event to a device with no driver (or no parent) reaches nobody: it ends at the broker
            parent = self._parent_of(dev) or BROKER
            drv = self._driver_of(dev, bool(rec.get("mono_ns")))
            child = self._child_of_driver(drv) if drv else BROKER
            sender = self._sender(rec.get("inc"))
            if rec.get("direction") == "parent->child":
                rec.setdefault("src", sender or parent)
                rec.setdefault("dst", child)
            else:
                rec.setdefault("src", sender or child)
                rec.setdefault("dst", parent)
        else:   # a runtime's trace record about itself (hardware, lock waits) on its lifeline
            detail = rec.get("detail") if isinstance(rec.get("detail"), dict) else {}
            peer = lifeline(detail.get("peer"))
            if peer.startswith(("parent ", "child ")):
                self._label(detail["peer"])
            else:
                peer = BROKER
            rec.setdefault("src", peer)
            rec.setdefault("dst", peer)
        for ll in (rec["src"], rec["dst"]):
            if ll not in self.order:
                self.order.append(ll)
        return rec


def _globs(values) -> list[str]:
    return [v for v in (values or ()) if v]


def _any(patterns: list[str], *candidates) -> bool:
    cands = [str(c) for c in candidates if c]
    return any(fnmatch.fnmatchcase(c.lower(), p.lower()) for p in patterns for c in cands)


@dataclass
class Filter:
    """``--device``/``--event``/``--peer`` globs. ``--event`` also matches a bus
    action (``--event BIND``); ``--peer`` matches a lifeline or its process name."""

    devices: list = field(default_factory=list)
    events: list = field(default_factory=list)
    peers: list = field(default_factory=list)

    def __post_init__(self):
        self.devices, self.events, self.peers = _globs(self.devices), _globs(self.events), _globs(self.peers)

    def __bool__(self) -> bool:
        return bool(self.devices or self.events or self.peers)

    def __call__(self, rec: dict) -> bool:
        if self.devices and not _any(self.devices, rec.get("dev")):
            return False
        if self.events and not _any(self.events, rec.get("event"), rec.get("action")):
            return False
        if self.peers:
            names = []
            for ll in (rec.get("src"), rec.get("dst"), lifeline(rec.get("from")), lifeline(rec.get("to"))):
                if ll:
                    names += [ll, ll.split(" ", 1)[-1]]
            detail = rec.get("detail") or {}
            names += [rec.get("driver"), detail.get("name") if isinstance(detail, dict) else None]
            if not _any(self.peers, *names):
                return False
        return True


def summary(value, limit: int = 80) -> str:
    """A short one-line JSON rendering of a payload (``limit`` 0: all of it)."""
    text = json.dumps(value, separators=(",", ":"), default=_json_default)
    return text if not limit or len(text) <= limit else text[:limit - 1] + "…"


def is_hw(rec: dict) -> bool:
    """A parent's hardware change: a trace record 'HW <what>' (a model's ``rt.report``)."""
    return rec.get("kind") == "trace" and str(rec.get("action", "")).startswith("HW ")


def _hw_line(ts: str, rec: dict) -> str:
    d = dict(rec.get("detail") or {})
    peer = str(d.pop("peer", "")).split("[")[0].split("#")[0]
    d.pop("task", None)
    what, dev = d.pop("what", "?"), d.pop("dev", "") or peer.replace("parent ", "")
    body = " ".join(f"{k}={summary(v, 0) if isinstance(v, (list, dict)) else v}" for k, v in d.items())
    return f"{ts}  hw     {what:<13} {dev:<12} {body}".rstrip()


def format_trace(rec: dict, payload_limit: int = 80) -> str:
    """One line per record: time (seconds since the bus started, as ``monitor`` shows it),
    kind, name, device, who -> whom, result or payload (cut at ``payload_limit``
    characters; 0: whole). A model's hardware report is an ``hw`` line."""
    ts = f"[{rec.get('ts', 0.0):11.6f}]"
    kind = rec.get("kind", "?")
    if is_hw(rec):
        return _hw_line(ts, rec)
    arrow = f"{rec['src']} -> {rec['dst']}" if rec.get("src") and rec["src"] != rec.get("dst") else ""
    if kind in ("bus", "trace"):   # notifications; "trace": faults, lockdep reports and the like
        detail = rec.get("detail") or {}
        text = " ".join(f"{k}={v}" for k, v in detail.items())
        who = rec.get("dev") or rec.get("driver") or "-"
        if rec.get("dev") and rec.get("driver"):
            text = f"driver={rec['driver']} {text}"
        return f"{ts}  {kind:<6} {rec.get('action', '?'):<13} {who:<12} {arrow:<36} {text}".rstrip()
    if kind == "call":
        errno = rec.get("errno") or 0
        result = "0" if not errno else f"{errno} {rec.get('error') or ''}".strip()
        us = rec.get("us")
        lat = f"  ({us / 1000:.2f} ms)" if isinstance(us, (int, float)) else ""
        lane = "  lane" if rec.get("lane") else ""       # served on the direct lane, not via the broker
        return f"{ts}  call   {rec.get('event', '?'):<13} {rec.get('dev', '-'):<12} {arrow:<36} = {result}{lat}{lane}"
    if kind == "event":
        return (f"{ts}  event  {rec.get('event', '?'):<13} {rec.get('dev', '-'):<12} {arrow:<36} "
                f"async #{rec.get('seq', '?')} {summary(rec.get('payload'), payload_limit)}")
    rest = {k: v for k, v in rec.items() if k not in ("kind", "ts", "src", "dst")}
    return f"{ts}  {kind:<6} {summary(rest, 120)}"


# ---- udevadm monitor -----------------------------------------------------------------------

_UDEV_ACTION = {"DRIVER_ADD": "add", "DRIVER_REMOVE": "remove", "REGISTER": "add", "UNREGISTER": "remove",
                "PEER_DEAD": "offline"}


def udev_event(rec: dict) -> dict:
    """A bus record as udev would describe it: action, devpath, subsystem and properties."""
    action, dev, drv = rec.get("action", ""), rec.get("dev") or "", rec.get("driver") or ""
    detail = dict(rec.get("detail") or {})
    if action in ("REGISTER", "UNREGISTER", "PEER_DEAD"):
        role = detail.get("role") or ""
        devpath = f"/auxipc/peers/{detail.get('name', '?')}"
        subsystem = "auxipc"
        props = {"PEER": detail.pop("name", ""), **({"ROLE": detail.pop("role")} if role else {})}
    elif action in ("DRIVER_ADD", "DRIVER_REMOVE") or (drv and not dev):
        devpath, subsystem, props = f"/bus/auxiliary/drivers/{drv}", "drivers", {"DRIVER": drv}
    elif dev:
        devpath, subsystem = f"/bus/auxiliary/devices/{dev}", "auxiliary"
        props = {"DEVNAME": dev, **({"DRIVER": drv} if drv else {})}
        props["MODALIAS"] = detail.pop("modalias", None) or f"auxiliary:{match_name(dev)}"
    else:
        devpath, subsystem, props = "/auxipc/bus", "auxipc", {}
    out = {"ACTION": _UDEV_ACTION.get(action, action.lower()), "DEVPATH": devpath, "SUBSYSTEM": subsystem,
           **props}
    if out["ACTION"] != action.lower():
        out["AUXIPC_ACTION"] = action
    for k, v in detail.items():
        out[re.sub(r"[^A-Z0-9_]", "_", str(k).upper())] = (",".join(map(str, v)) if isinstance(v, (list, tuple))
                                                           else v)
    if rec.get("seq") is not None:
        out["SEQNUM"] = rec["seq"]
    return out


def format_udev(rec: dict, stamp: float, properties: bool = False) -> str:
    """``KERNEL[12.345678] bind     /bus/auxiliary/devices/ixd.eth.0 (auxiliary)``,
    then with ``properties`` the KEY=value lines and a blank line, as udevadm prints them."""
    ev = udev_event(rec)
    head = f"KERNEL[{stamp:.6f}] {ev['ACTION']:<8} {ev['DEVPATH']} ({ev['SUBSYSTEM']})"
    if not properties:
        return head
    return "\n".join([head, *(f"{k}={v}" for k, v in ev.items()), ""])


# ---- JSON lines ----------------------------------------------------------------------------

def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def dumps(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), default=_json_default)


def load(path) -> list[dict]:
    """Records from a JSON-lines file (blank lines skipped; a bad line names its number)."""
    from proto.errno import AuxError, Errno
    records = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise AuxError(Errno.ENOENT, f"cannot read trace {path}: {exc.strerror}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuxError(Errno.EINVAL, f"{path}:{n}: not a JSON record ({exc.msg}); "
                               "record with 'auxipc trace --record FILE'") from None
            if not isinstance(rec, dict) or "kind" not in rec:
                raise AuxError(Errno.EINVAL, f"{path}:{n}: a trace record is an object with 'kind'")
            records.append(rec)
    return records
