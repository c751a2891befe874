"""Conditions on the bus a script can wait for: ``auxipc wait``, scenario ``wait``
steps and the pytest plugin share them.

A condition is checked against the ``ls`` snapshot (``broker`` only needs a
ping, ``watcher`` the broker's list of subscribed watchers). ``check`` answers ``(met, why)``: ``why`` says what holds now, so a
timeout can tell the user what it saw instead of only "timed out".
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from auxipc.runtime_dir import endpoints
from proto.errno import AuxError, Errno

if TYPE_CHECKING:
    from auxipc.observe.client import Client

# name -> (needs an argument: True, False, or None for an optional one; help)
CONDITIONS: dict[str, tuple[bool | None, str]] = {
    "broker": (False, "a broker answers ping in the runtime dir"),
    "watcher": (None, "a watcher (monitor, trace; named NAME if given) is subscribed: what is "
                      "published from now on reaches it"),
    "peer": (True, "a parent or child process named NAME is registered and alive"),
    "peer-gone": (True, "no live process named NAME is registered"),
    "driver": (True, "a driver named NAME is registered"),
    "device": (True, "device NAME is on the bus (added)"),
    "gone": (True, "device NAME is not on the bus"),
    "bound": (True, "device NAME is bound to a driver"),
    "unbound": (True, "device NAME is on the bus and not bound"),
}


def validate(cond: str, arg: str | None) -> None:
    if cond not in CONDITIONS:
        raise AuxError(Errno.EINVAL, f"unknown condition {cond!r} (one of: {', '.join(CONDITIONS)})")
    needs = CONDITIONS[cond][0]
    if needs and not arg:
        raise AuxError(Errno.EINVAL, f"condition {cond!r} needs a name (e.g. 'auxipc wait {cond} ixd.eth.0')")
    if needs is False and arg:
        raise AuxError(Errno.EINVAL, f"condition {cond!r} takes no name (got {arg!r})")


def _device(snap: dict, name: str) -> dict | None:
    return next((d for d in snap["devices"] if d["name"] == name), None)


def _names(items: list[dict]) -> str:
    return ", ".join(sorted({i["name"] for i in items})) or "none"


def check(cond: str, arg: str | None, snap: dict) -> tuple[bool, str]:
    """Whether ``cond`` holds in the ``ls`` snapshot, and what the bus shows."""
    if cond == "broker":
        return True, f"broker answers (epoch {snap.get('epoch')})"
    if cond == "watcher":
        found = [w for w in snap.get("watchers", []) if not arg or w["name"] == arg]
        names = ", ".join(f"{w['name']} (pid {w['pid']})" for w in snap.get("watchers", [])) or "none"
        what = f"watcher {arg}" if arg else "a watcher"
        return bool(found), (f"{what} is subscribed (pid {found[0]['pid']})" if found
                             else f"no {what} subscribed (watchers: {names})")
    if cond in ("peer", "peer-gone"):
        live = [p for p in snap["peers"] if p["name"] == arg and p["alive"]]
        if cond == "peer":
            return bool(live), (f"{live[0]['role']} {arg} is registered (pid {live[0]['pid']})" if live
                                else f"no live process named {arg} (peers: {_names(snap['peers'])})")
        return not live, (f"no live process named {arg}" if not live
                          else f"{arg} is still registered (pid {live[0]['pid']})")
    if cond == "driver":
        drv = next((d for d in snap["drivers"] if d["name"] == arg), None)
        return drv is not None, (f"driver {arg} is registered by {drv['peer']}" if drv
                                 else f"no driver {arg} (drivers: {_names(snap['drivers'])})")
    dev = _device(snap, arg)
    if dev is None:
        return cond == "gone", f"no device {arg} (devices: {_names(snap['devices'])})"
    where = f"{arg} is {dev['state']}, {dev['bind']}" + (f" to {dev['driver']}" if dev["driver"] else "")
    if dev.get("last_error"):
        where += f" (last error: {dev['last_error']})"
    added = dev["state"] == "added"
    if cond == "device":
        return added, where
    if cond == "gone":
        return not added, where
    if cond == "bound":
        return added and dev["bind"] == "bound", where
    return added and dev["bind"] != "bound", where   # unbound


def wait(cond: str, arg: str | None = None, timeout: float = 10.0, runtime_dir=None,
         poll: float = 0.02, client: Client | None = None) -> tuple[str, float]:
    """Block until ``cond`` holds; returns (what holds, seconds waited).

    Keeps trying while no broker answers (it may be starting). Raises ETIMEDOUT
    with what the bus showed last (or why no broker answered)."""
    from auxipc.observe.client import Client  # zmq: only once something waits (not for --help)
    validate(cond, arg)
    t0 = time.monotonic()
    deadline = t0 + timeout
    own = client is None
    last = ""
    try:
        while True:
            try:
                if client is None:
                    client = Client(runtime_dir, timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                snap = client.query({"broker": "ping", "watcher": "watchers"}.get(cond, "ls"))
                met, last = check(cond, arg, snap)
                if met:
                    return last, time.monotonic() - t0
            except AuxError as exc:
                if exc.errno not in (Errno.ENOTCONN, Errno.ETIMEDOUT):
                    raise
                last = (f"no broker in {endpoints(runtime_dir).root}: start one with 'auxipc broker' "
                        "or pass --runtime-dir" if exc.errno == Errno.ENOTCONN else str(exc))
                if own and client is not None:
                    client.close()
                    client = None
            if time.monotonic() >= deadline:
                what = f"{cond} {arg}" if arg else cond
                raise AuxError(Errno.ETIMEDOUT, f"'{what}' did not hold within {timeout:g} s: {last}")
            time.sleep(poll)
    finally:
        if own and client is not None:
            client.close()
