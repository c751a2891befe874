"""The broker's TCP listeners and who they admit.

Over ipc the runtime dir's 0700 mode is the access control. Over TCP each of the
broker's four sockets also binds ``tcp://ADDR:PORT+i`` (runtime_dir.tcp_endpoints)
as a CURVE server; a ZAP handler (``zmq.auth``'s thread) admits a client only if
its public key is in the key dir's ``authorized/`` (read at each handshake, so
admitting or revoking a key needs no restart). A refused key is logged with its
z85 text and counted (``refused_keys``); the client sees the handshake fail
(its runtime fails with EPERM naming the key dir). ``insecure`` binds plain TCP:
no encryption, no authentication, and ``auxipc ls`` says so.

The security options are set on a socket just before its TCP binds: libzmq takes
a listener's options at bind time, so the ipc and inproc endpoints bound before
stay plain (and never consult ZAP).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import zmq

from auxipc import keys
from auxipc.runtime_dir import remote_host, tcp_endpoints

log = logging.getLogger("auxipc.broker")

ZAP_DOMAIN = "auxipc"


@dataclass
class Listeners:
    """The TCP side of a broker: ``urls`` as given to ``--listen``."""

    urls: tuple[str, ...] = ()
    insecure: bool = False
    key_dir: str | None = None
    stats: Counter = field(default_factory=Counter)
    auth: object = None

    def __post_init__(self) -> None:
        self.endpoints = [tcp_endpoints(u, "--listen") for u in self.urls]
        if self.urls and not self.insecure:
            self._public, self._secret = keys.server_keys(self.key_dir)

    def describe(self) -> list[dict]:
        """What ``ls`` shows: each TCP listener and its security."""
        return [{"url": u, "security": "insecure" if self.insecure else "curve"} for u in self.urls]

    def start(self, ctx: zmq.Context) -> None:
        """The ZAP handler, before any CURVE bind (a handshake without one is admitted)."""
        if not self.urls or self.insecure:
            return
        from zmq.auth.thread import ThreadAuthenticator
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("auxipc.broker.zap"))
        self.auth.start()
        self.auth.allow()      # any address: the key is what is checked
        self.auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Admit(self.key_dir, self.stats))

    def bind(self, sock: zmq.Socket, role: str) -> None:
        """Bind ``sock`` (the broker's socket for ``role``) on every TCP listener."""
        if not self.urls:
            return
        if not self.insecure:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self._public, self._secret
            sock.zap_domain = ZAP_DOMAIN.encode()
        for ep in self.endpoints:
            try:
                sock.bind(ep[role])
            except zmq.ZMQError as exc:
                from proto.errno import AuxError, Errno
                raise AuxError(Errno.EBUSY if exc.errno == zmq.EADDRINUSE else Errno.EINVAL,
                               f"--listen: cannot bind {ep[role]} (the {role} socket): {exc.strerror}") from None

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class _Admit:
    """zmq.auth's credentials provider: admitted iff the key is in ``authorized/``."""

    def __init__(self, key_dir, stats: Counter):
        self.key_dir, self.stats = key_dir, stats

    def callback(self, domain: str, key: bytes) -> bool:
        admitted = keys.authorized(self.key_dir)
        if key in admitted:
            return True
        self.stats["refused_keys"] += 1
        if self.stats["refused_keys"] & (self.stats["refused_keys"] - 1):
            return False      # a refused client retries: log its 1st, 2nd, 4th, 8th... refusal
        log.warning("refused a CURVE client with key %s: not in %s (%d refusals)", key.decode(errors="replace"),
                    keys.key_dir(self.key_dir) / keys.AUTHORIZED, self.stats["refused_keys"])
        return False


def with_hosts(snap: dict, bus, listen: Listeners | None) -> dict:
    """``ls`` across hosts: the TCP listeners (and whether they are insecure), each
    peer's host ("local" over ipc), and the refused handshakes. ``listen`` None: a
    bus driven without a broker process (the fuzz harness): no listeners."""
    listen = listen if listen is not None else Listeners()
    hosts = {p.label: remote_host(p.ident) or "local" for p in bus.peers.values()}
    for p in snap["peers"]:
        label = f"{p['role']} {p['name']}[{p['pid']}]#{p['inc']}"
        p["host"] = hosts.get(label, "local")
    snap["listen"] = listen.describe()
    if listen.stats:
        snap["stats"].update(listen.stats)
    return snap


def refuse_remote(peers) -> None:
    """A signal reaches processes on the broker's host only: a remote peer's pid is
    another host's (here it may be any process's)."""
    far = [f"{p.label} on {remote_host(p.ident)}" for p in peers if remote_host(p.ident)]
    if far:
        from proto.errno import AuxError, Errno
        raise AuxError(Errno.EOPNOTSUPP, f"cannot signal {', '.join(far)}: not on the broker's host "
                       "(signal it there)")


# ---- who a TCP peer is -------------------------------------------------------------
# Over ipc the kernel vouches for a peer (SO_PEERCRED: pid, uid). Over TCP nothing
# local does: a peer is the key CURVE admitted it with (its User-Id, the z85 public
# key) or, on an --insecure listener, its address. That identity is recorded at
# REGISTER and an async event from a remote peer passes the gate only from it.

def tcp_identity(frame) -> str | None:
    """``curve:<key>`` or ``tcp:<address>`` for a message that came over TCP; None for
    ipc (whose Peer-Address is ``localhost:uid:gid:pid``) or inproc."""
    try:
        addr = frame.get("Peer-Address")
    except (zmq.ZMQError, UnicodeDecodeError):
        return None
    if not isinstance(addr, str) or not addr or addr.startswith("localhost:"):
        return None
    try:
        user = frame.get("User-Id")
    except (zmq.ZMQError, UnicodeDecodeError):
        user = None
    return f"curve:{user}" if user else f"tcp:{addr}"


class RemotePeers:
    """The TCP identity each remote peer registered with (by routing id)."""

    def __init__(self) -> None:
        self.identity: dict[bytes, str] = {}

    def register(self, ident: bytes, frame, listening: bool) -> str | None:
        """Check a REGISTER that carries no ipc credentials; None if it may go on, else
        why not (EPERM)."""
        who = tcp_identity(frame) if frame is not None else None
        if who is None or not listening:
            return "register: the connection carries no peer credentials (ipc on Linux only)"
        if remote_host(ident) is None:
            return ("register: a peer over TCP names its host in its routing id (r:name:pid:random@host); "
                    "use auxipc's runtime, or AUXIPC_CONNECT")
        if len(self.identity) > 4 * 65536:
            self.identity.clear()      # bounded: stale entries of peers long gone
        self.identity[ident] = who
        return None

    def same_sender(self, sender, creds, frame) -> bool:
        """The async gate's check for ``sender`` (the device's parent or driver peer)."""
        if creds is not None:
            return creds[0] == sender.pid and remote_host(sender.ident) is None
        want = self.identity.get(sender.ident)
        return want is not None and tcp_identity(frame) == want
