"""Where the bus lives: the runtime directory, its socket paths and its lock.

Resolution order: ``--runtime-dir``, ``$AUXIPC_RUNTIME_DIR``,
``$XDG_RUNTIME_DIR/auxipc``, ``/tmp/auxipc-<uid>``. The directory is created
mode 0700; an existing one must be ours and 0700 already. One broker per
directory, enforced by an ``flock`` on ``broker.lock`` (a second ipc bind on the same path would silently steal the socket).

A bus on another host is reached over TCP instead: ``$AUXIPC_CONNECT``
(``auxipc --connect``) names its ``tcp://HOST:PORT``; the broker's four sockets
are on PORT .. PORT+3 (``tcp_endpoints``). TCP is CURVE-encrypted and
authenticated (auxipc/keys.py) unless ``$AUXIPC_INSECURE`` (``--insecure``) is set.
The admin socket (send, bind, unbind, fault, signal) stays ipc-only: across hosts
a client reads the bus (ls, trace, wait) through the bus socket.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from auxipc.procfs import gone
from proto.errno import AuxError, Errno

SOCKETS = ("bus.sock", "pub.sock", "sub.sock", "notify.sock", "admin.sock")


def resolve(runtime_dir: str | os.PathLike | None = None) -> Path:
    if runtime_dir:
        return Path(runtime_dir).expanduser().absolute()
    if os.environ.get("AUXIPC_RUNTIME_DIR"):
        return Path(os.environ["AUXIPC_RUNTIME_DIR"]).expanduser().absolute()
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "auxipc"
    return Path(f"/tmp/auxipc-{os.getuid()}")


PORTS = ("bus", "pub", "sub", "notify")     # a TCP bus: these at PORT, PORT+1, PORT+2, PORT+3


def parse_tcp(url: str, what: str = "--connect") -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (HOST, PORT), PORT leaving room for the three after it."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not url.startswith("tcp://") or not host or port is None or parts.path or not 0 < port <= 65535 - 3:
        raise AuxError(Errno.EINVAL, f"{what}: {url!r} is not tcp://HOST:PORT with PORT in 1..65532 "
                       "(the bus uses PORT..PORT+3)")
    return host, port


def tcp_endpoints(url: str, what: str = "--connect") -> dict[str, str]:
    """The four sockets of a TCP bus, by role (``PORTS``)."""
    host, port = parse_tcp(url, what)
    host = f"[{host}]" if ":" in host else host
    return {role: f"tcp://{host}:{port + i}" for i, role in enumerate(PORTS)}


def remote_host(ident: bytes) -> str | None:
    """The host a peer connected from over TCP (its routing id's ``@host``), or None
    for a peer on the broker's host (ipc)."""
    at = ident.rfind(b"@")
    return ident[at + 1:].decode(errors="replace") if at >= 0 else None


@dataclass(frozen=True)
class Endpoints:
    """The endpoints of a bus: request/reply, publish-in, subscribe-out, notifications.
    In ``root`` over ipc, or at ``tcp`` (``tcp://HOST:PORT``) on another host; over TCP
    ``secure`` sets a socket up for CURVE before it connects (``insecure``: plain)."""

    root: Path
    tcp: str | None = None
    insecure: bool = False

    def _at(self, role: str, sock: str) -> str:
        return tcp_endpoints(self.tcp)[role] if self.tcp else f"ipc://{self.root / sock}"

    @property
    def where(self) -> str:
        """For messages: where the broker is looked for."""
        return self.tcp or str(self.root)

    @property
    def remote(self) -> bool:
        return self.tcp is not None

    @property
    def bus(self) -> str:
        return self._at("bus", "bus.sock")

    @property
    def pub(self) -> str:
        """Peers connect their PUB here (the broker's XSUB)."""
        return self._at("pub", "pub.sock")

    @property
    def notify(self) -> str:
        """Bus notifications and the call trace (the broker's own XPUB): a subscriber
        connects its SUB here as well as to ``sub``."""
        return self._at("notify", "notify.sock")

    @property
    def admin(self) -> str:
        """Control ops that change the bus (send, bind, unbind, fault, signal) are
        taken only here: the CLI's socket, not the peers'. Over TCP there is none (the
        bus socket answers the read-only ops; the others are refused with EPERM)."""
        return self.bus if self.tcp else f"ipc://{self.root / 'admin.sock'}"

    @property
    def sub(self) -> str:
        """Peers connect their SUB here (the broker's XPUB)."""
        return self._at("sub", "sub.sock")

    def secure(self, sock) -> None:
        """Before ``sock`` connects to a TCP bus: the CURVE client keys (this host's pair,
        the broker's public key). Nothing over ipc or with ``insecure``."""
        if self.tcp and not self.insecure:
            from auxipc.keys import client_keys
            public, secret, server = client_keys()
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server

    def check(self) -> None:
        if self.tcp:
            parse_tcp(self.tcp)
            return
        longest = max(len(str(self.root / name)) for name in SOCKETS)
        import zmq  # here, not at the top: `auxipc --help` needs the paths, not zmq
        limit = getattr(zmq, "IPC_PATH_MAX_LEN", 107) or 107
        if longest > limit:
            raise AuxError(Errno.EINVAL, f"runtime dir {self.root} is too long for an ipc socket path "
                           f"({longest} > {limit} characters); pass a shorter --runtime-dir "
                           "or set AUXIPC_RUNTIME_DIR")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


def endpoints(runtime_dir=None, connect: str | None = None, insecure: bool | None = None) -> Endpoints:
    """The bus to talk to: ``connect`` (or ``$AUXIPC_CONNECT``) names a TCP bus; else the
    runtime dir's ipc sockets."""
    connect = connect if connect is not None else os.environ.get("AUXIPC_CONNECT") or None
    insecure = insecure if insecure is not None else _flag("AUXIPC_INSECURE")
    ep = Endpoints(resolve(runtime_dir), connect or None, insecure)
    ep.check()
    return ep


class BrokerLock:
    """Creates the runtime dir (0700) or checks an existing one, and holds
    ``broker.lock`` for the broker's life.

    An existing dir must be a real directory (not a symlink), owned by this user and
    mode 0700: one that is not is refused, never repaired (someone else may have
    made it, and chmodding it would hand them our sockets). The lock file is opened
    without following a symlink and must be a regular file of ours. At exit the
    broker removes only what it made: the sockets it bound (the same inodes), its
    lock file, and the dir if it created it and it is empty."""

    def __init__(self, root: Path):
        self.root = root
        self.created = False
        self._fd: int | None = None
        self._made: dict[str, tuple[int, int]] = {}    # file name -> (st_dev, st_ino) we created

    def acquire(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True)
            self.created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise AuxError(Errno.EINVAL, f"cannot create runtime dir {self.root}: {exc.strerror}") from None
        self.check_dir()
        path = self.root / "broker.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuxError(Errno.EPERM, f"cannot open {path}: {exc.strerror} (a symlink is refused)") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_nlink != 1:
            os.close(fd)
            raise AuxError(Errno.EPERM, f"{path} is not a regular file of uid {os.getuid()} with one link; "
                           "remove it or pass another --runtime-dir")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AuxError(Errno.EBUSY, f"another broker (pid {owner}) already owns {self.root}; "
                           "stop it or pass another --runtime-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self._made["broker.lock"] = (st.st_dev, st.st_ino)

    def check_dir(self) -> None:
        """Refuse a runtime dir that is a symlink, not a directory, not ours or not 0700."""
        try:
            st = os.lstat(self.root)
        except OSError as exc:
            raise AuxError(Errno.EINVAL, f"runtime dir {self.root}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise AuxError(Errno.EPERM, f"runtime dir {self.root} is a symlink; refused "
                           "(pass the real path with --runtime-dir)")
        if not stat.S_ISDIR(st.st_mode):
            raise AuxError(Errno.EEXIST, f"runtime dir {self.root} exists and is not a directory")
        if st.st_uid != os.getuid():
            raise AuxError(Errno.EPERM, f"runtime dir {self.root} belongs to uid {st.st_uid}, not {os.getuid()}")
        if st.st_mode & 0o077:
            raise AuxError(Errno.EPERM, f"runtime dir {self.root} is mode {stat.S_IMODE(st.st_mode):04o}, "
                           "not 0700: others could reach the bus; 'chmod 700' it or pass another --runtime-dir")

    def made(self, name: str) -> None:
        """Note a file the broker just created in the dir (a socket it bound)."""
        st = os.lstat(self.root / name)
        self._made[name] = (st.st_dev, st.st_ino)

    def release(self) -> None:
        """Remove what the broker made: its sockets and lock (if they are still the
        files it made), then the dir if it created it and it is empty."""
        if self._fd is None:
            return
        for name, ident in self._made.items():
            path = self.root / name
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    path.unlink()
            except FileNotFoundError:
                pass
        self._made.clear()
        remove_stale_lanes(self.root)
        os.close(self._fd)
        self._fd = None
        if self.created:
            try:
                self.root.rmdir()
            except OSError:
                pass


LANE_ENV = "AUXIPC_LANE"
IPC_PATH_MAX = 107       # zmq.IPC_PATH_MAX_LEN: a lane endpoint is an ipc path
_LANE_FILE = re.compile(r"lane-(\d+)-[0-9a-f]+")


def lane_enabled(default: bool = True) -> bool:
    """``AUXIPC_LANE`` (docs/protocol.md, section 8): '0' turns the direct lane off (a
    broker grants none; a runtime offers and uses none), '1' on; unset, ``default``."""
    value = os.environ.get(LANE_ENV, "").strip().lower()
    return default if value == "" else value not in ("0", "off", "no", "false")


def remove_stale_lanes(root: Path) -> int:
    """Remove the lane sockets (``lane-<pid>-<hex>``, docs/protocol.md section 8) of
    processes that no longer run: a killed parent cannot remove its own. A live
    process's file stays. Returns how many were removed."""
    n = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        m = _LANE_FILE.fullmatch(name)
        if m is None:
            continue
        if not gone(int(m.group(1))):
            continue            # its process still runs
        try:
            os.unlink(root / name)
            n += 1
        except OSError:
            pass
    return n
