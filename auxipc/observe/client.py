"""A control client: what the CLI and tests use to query and drive a running bus."""

from __future__ import annotations

import itertools
import os
import time

import zmq

from auxipc.runtime_dir import endpoints
from proto import envelope as E
from proto.errno import AuxError, Errno, errno_name
from proto.events import CATALOG, Catalog


class Client:
    def __init__(self, runtime_dir=None, timeout: float = 5.0):
        self.ep = endpoints(runtime_dir)
        self.timeout = timeout
        if not self.ep.remote and not (self.ep.root / "admin.sock").exists():
            raise AuxError(Errno.ENOTCONN, f"no broker in {self.ep.root}: start one with 'auxipc broker' "
                           "(or set --runtime-dir / AUXIPC_RUNTIME_DIR)")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"ctl:{os.getpid()}:{os.urandom(3).hex()}".encode())
        self.monitor = None
        if self.ep.remote:
            # Over TCP a refused key shows on the monitor: fail with it, not a timeout.
            from auxipc.keys import handshake_failed_events
            self.monitor = self.sock.get_monitor_socket(handshake_failed_events())
        self.ep.secure(self.sock)
        self.sock.connect(self.ep.admin)
        self._r = itertools.count(1)

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ctl(self, op: str, payload: bytes | None = None, timeout: float | None = None, **args):
        """Send a control op; returns (Result, reply payload frame). Does not raise on e != 0."""
        r = next(self._r)
        self.sock.send_multipart(E.encode(E.Ctl(r=r, op=op, args=args), payload))
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll(remaining):
                raise AuxError(Errno.ETIMEDOUT, f"the broker in {self.ep.where} did not answer '{op}' "
                               f"within {timeout:.1f} s")
            msg, frame = E.decode(self.sock.recv_multipart())
            if isinstance(msg, E.Result) and msg.r == r:
                return msg, frame

    def _poll(self, timeout: float) -> bool:
        """Wait for the answer; over TCP a failed handshake raises at once."""
        if self.monitor is None:
            return bool(self.sock.poll(timeout * 1000))
        from auxipc.keys import monitor_event, refused
        ready = dict(zmq.zmq_poll([(self.sock, zmq.POLLIN), (self.monitor, zmq.POLLIN)], int(timeout * 1000)))
        if self.monitor in ready:
            raise refused(self.ep.where, monitor_event(self.monitor))
        return self.sock in ready

    def query(self, op: str, **args) -> dict:
        """A control op's data (raises AuxError on an error). ``ls`` and ``uevents`` are
        paged by the broker (a bus of any size fits no single message): their pages are
        fetched and joined here."""
        if op == "ls" and "after" not in args:
            return self._ls(**args)
        if op == "uevents":
            return self._uevents(**args)
        return self._query(op, **args)

    def _query(self, op: str, **args) -> dict:
        result, _ = self.ctl(op, **args)
        if result.e:
            raise AuxError(result.e, result.m)
        return result.d

    def _ls(self, **args) -> dict:
        snap = self._query("ls", **args)
        after = snap.pop("next", None)
        while after is not None:
            page = self._query("ls", after=after, **args)
            if page["epoch"] != snap["epoch"]:
                raise AuxError(Errno.ESTALE, "the broker restarted while 'ls' was being read; ask again")
            snap["devices"].extend(page["devices"])
            after = page["next"]
        return snap

    def _uevents(self, since: int = 0, **args) -> dict:
        got = self._query("uevents", since=since, **args)
        while got.pop("more", False) and got["events"]:
            page = self._query("uevents", since=got["events"][-1]["seq"], **args)
            got["events"].extend(page["events"])
            got["more"], got["last"] = page.get("more", False), page["last"]
        got.pop("more", None)
        return got

    def send_event(self, device: str, event: str, side: str, payload: dict | None, timeout: float,
                   catalog: Catalog = CATALOG) -> dict:
        """Have ``side``'s runtime send ``event`` on ``device``; {errno, error, message, reply}."""
        result, frame = self.ctl("send", E.packb(payload or {}), timeout=timeout + 2.0, device=device,
                                 event=event, **{"from": side}, timeout_ms=max(1, int(timeout * 1000)))
        reply = None
        if frame is not None:
            reply = E.decode_payload_frame(frame, "$.reply")
            spec = catalog.lookup(event)
            if spec.sync:
                try:
                    reply = spec.reply.from_wire(reply, "$.reply").to_json()
                except AuxError:
                    pass
        return {"errno": result.e, "error": errno_name(result.e) if result.e else None,
                "message": result.m, "reply": reply}

    def wait_for(self, pred, timeout: float = 10.0, poll: float = 0.02):
        """Poll ``ls`` until ``pred(snapshot)`` is truthy; returns the snapshot or raises ETIMEDOUT."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.query("ls")
            if pred(snap):
                return snap
            if time.monotonic() > deadline:
                raise AuxError(Errno.ETIMEDOUT, f"condition not met within {timeout:.1f} s")
            time.sleep(poll)

    # ---- fault injection (see auxipc/faults.py) ----------------------------------------

    def add_fault(self, **rule) -> dict:
        """Install a fault rule: kind=kill|handler|message, target=peer name, ..."""
        return self.query("fault", action="add", rule=rule)["rule"]

    def clear_faults(self, target: str = "") -> int:
        return self.query("fault", action="clear", target=target)["cleared"]

    def faults(self) -> list[dict]:
        return self.query("fault", action="ls")["rules"]

    def signal(self, target: str, signal: str = "KILL") -> list[str]:
        """Send a signal to every live peer named ``target`` (or with that pid)."""
        return self.query("signal", target=target, signal=signal)["signalled"]
