"""The errno table: the one place an error code is named, numbered and described.

Numbers are Linux's (``include/uapi/asm-generic/errno*.h``), plus the kernel-internal
``EPROBE_DEFER`` (517). The wire always carries the *negative* integer, as a
kernel function returns it; 0 is success.
"""

from enum import IntEnum


class Errno(IntEnum):
    EPERM = 1
    ENOENT = 2
    EIO = 5
    ENXIO = 6
    EAGAIN = 11
    ENOMEM = 12
    EBUSY = 16
    EEXIST = 17
    ENODEV = 19
    EINVAL = 22
    ENOSPC = 28
    EDEADLK = 35
    ETIME = 62
    EPROTO = 71
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    ENOTCONN = 107
    ESHUTDOWN = 108
    ETIMEDOUT = 110
    ESTALE = 116
    EPROBE_DEFER = 517


# errno -> (strerror, what auxipc uses it for). Rendered into docs/protocol.md.
ERRNO_TABLE: dict[Errno, tuple[str, str]] = {
    Errno.EPERM: ("Operation not permitted", "a peer acting outside its role (a child adding a device)"),
    Errno.ENOENT: ("No such file or directory",
                   "no such entry (a filter a handler does not have); scenario file, module or process not found"),
    Errno.EIO: ("Input/output error", "reset requested after a failed reset; FW mailbox failure"),
    Errno.ENXIO: ("No such device or address", "probe rejects the device silently; mailbox shut down"),
    Errno.EAGAIN: ("Resource temporarily unavailable", "bind while the probe is deferred"),
    Errno.ENOMEM: ("Cannot allocate memory", "allocation failure (injected)"),
    Errno.EBUSY: ("Device or resource busy", "already bound; reset in progress; duplicate driver name"),
    Errno.EEXIST: ("File exists", "duplicate device name on add; peer name already registered"),
    Errno.ENODEV: ("No such device", "unknown, unbound or deleted device; callee died"),
    Errno.EINVAL: ("Invalid argument", "argument or payload validation; the message names the field"),
    Errno.ENOSPC: ("No space left on device", "resource exhausted (scheduling tree full)"),
    Errno.EDEADLK: ("Resource deadlock avoided", "a sync call that would close a wait-for cycle"),
    Errno.ETIME: ("Timer expired", "FW mailbox timeout"),
    Errno.EPROTO: ("Protocol error", "malformed frame or envelope"),
    Errno.EMSGSIZE: ("Message too long", "payload over the bus's maximum message size"),
    Errno.EOPNOTSUPP: ("Operation not supported", "event unknown to the schema or not handled by the receiver"),
    Errno.ENOTCONN: ("Transport endpoint is not connected", "no broker reachable in the runtime dir"),
    Errno.ESHUTDOWN: ("Cannot send after transport endpoint shutdown", "peer or bus going away; call cut short"),
    Errno.ETIMEDOUT: ("Connection timed out", "a sync call passed its deadline"),
    Errno.ESTALE: ("Stale file handle", "the broker restarted while a paged listing was being read"),
    Errno.EPROBE_DEFER: ("Probe deferred", "probe asks to be retried later (kernel-internal code)"),
}


# By number: a dict lookup instead of constructing the enum member (a slow call).
_NAMES = {int(e): e.name for e in Errno}
_STRERROR = {int(e): text for e, (text, _) in ERRNO_TABLE.items()}


def errno_name(code: int) -> str:
    """Name of an errno given as a positive or negative integer ('E123' if unknown)."""
    return _NAMES.get(abs(code)) or f"E{abs(code)}"


def strerror(code: int) -> str:
    return _STRERROR.get(abs(code)) or f"Unknown error {abs(code)}"


class AuxError(Exception):
    """An error that carries an errno.

    ``errno`` is the positive code, ``code`` the negative value the wire and kernel
    functions return. ``message`` says what failed and names the field or peer.
    """

    def __init__(self, errno: int, message: str | None = None):
        self.errno = abs(int(errno))
        self.message = message or strerror(self.errno)
        super().__init__(self.errno, self.message)

    @property
    def code(self) -> int:
        return -self.errno

    @property
    def name(self) -> str:
        return errno_name(self.errno)

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


class ProtocolError(AuxError):
    """A frame or envelope from a peer could not be decoded (the peer's fault, not ours)."""

    def __init__(self, message: str, errno: int = Errno.EPROTO):
        super().__init__(errno, message)

