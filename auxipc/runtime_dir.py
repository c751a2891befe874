"""Where the bus lives: the runtime directory, its socket paths and its lock.

Resolution order: ``--runtime-dir``, ``$AUXIPC_RUNTIME_DIR``,
``$XDG_RUNTIME_DIR/auxipc``, ``/tmp/auxipc-<uid>``. The directory is created
mode 0700. One broker per directory, enforced by an ``flock`` on ``broker.lock``
(a second ipc bind on the same path would silently steal the socket).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from proto.errno import AuxError, Errno

SOCKETS = ("bus.sock", "pub.sock", "sub.sock", "notify.sock")


def resolve(runtime_dir: str | os.PathLike | None = None) -> Path:
    if runtime_dir:
        return Path(runtime_dir).expanduser().absolute()
    if os.environ.get("AUXIPC_RUNTIME_DIR"):
        return Path(os.environ["AUXIPC_RUNTIME_DIR"]).expanduser().absolute()
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "auxipc"
    return Path(f"/tmp/auxipc-{os.getuid()}")


@dataclass(frozen=True)
class Endpoints:
    """The three ipc endpoints of a bus: request/reply, publish-in, subscribe-out."""

    root: Path

    @property
    def bus(self) -> str:
        return f"ipc://{self.root / 'bus.sock'}"

    @property
    def pub(self) -> str:
        """Peers connect their PUB here (the broker's XSUB)."""
        return f"ipc://{self.root / 'pub.sock'}"

    @property
    def notify(self) -> str:
        """Bus notifications and the call trace (the broker's own XPUB): a subscriber
        connects its SUB here as well as to ``sub``."""
        return f"ipc://{self.root / 'notify.sock'}"

    @property
    def sub(self) -> str:
        """Peers connect their SUB here (the broker's XPUB)."""
        return f"ipc://{self.root / 'sub.sock'}"

    def check(self) -> None:
        longest = max(len(str(self.root / name)) for name in SOCKETS)
        import zmq  # here, not at the top: `auxipc --help` needs the paths, not zmq
        limit = getattr(zmq, "IPC_PATH_MAX_LEN", 107) or 107
        if longest > limit:
            raise AuxError(Errno.EINVAL, f"runtime dir {self.root} is too long for an ipc socket path "
                           f"({longest} > {limit} characters); pass a shorter --runtime-dir "
                           "or set AUXIPC_RUNTIME_DIR")


def endpoints(runtime_dir=None) -> Endpoints:
    ep = Endpoints(resolve(runtime_dir))
    ep.check()
    return ep


class BrokerLock:
    """Creates the runtime dir (0700) and holds ``broker.lock`` for the broker's life."""

    def __init__(self, root: Path):
        self.root = root
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            if not self.root.is_dir():
                raise AuxError(Errno.EEXIST, f"runtime dir {self.root} exists and is not a directory") from None
        except OSError as exc:
            raise AuxError(Errno.EINVAL, f"cannot create runtime dir {self.root}: {exc.strerror}") from None
        st = self.root.stat()
        if st.st_uid != os.getuid():
            raise AuxError(Errno.EPERM, f"runtime dir {self.root} belongs to uid {st.st_uid}, not {os.getuid()}")
        if st.st_mode & 0o077:
            os.chmod(self.root, 0o700)
        path = self.root / "broker.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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

    def release(self) -> None:
        """Remove the sockets, the lock and (if we made it and it is empty) the dir."""
        if self._fd is None:
            return
        for name in SOCKETS:
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
        try:
            (self.root / "broker.lock").unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        try:
            self.root.rmdir()
        except OSError:
            pass
