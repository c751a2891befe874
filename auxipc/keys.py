"""CURVE keys for a bus across hosts, made and read with ``zmq.auth`` (no crypto here).

The key dir (``--keys``, ``$AUXIPC_KEYS``, ``$XDG_CONFIG_HOME/auxipc/keys``,
``~/.config/auxipc/keys``; mode 0700) holds:

- ``broker.key`` / ``broker.key_secret``: the broker's pair (on the broker's host);
  peers need only ``broker.key``, copied from there.
- ``NAME.key`` / ``NAME.key_secret``: this host's or peer's pair. A peer uses the
  pair named ``$AUXIPC_KEY_NAME``, else the host name.
- ``authorized/*.key``: the public keys the broker admits (read at each handshake,
  so admitting a key needs no restart).

Secret files are mode 0600.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from proto.errno import AuxError, Errno

BROKER = "broker"
AUTHORIZED = "authorized"


def key_dir(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser().absolute()
    if os.environ.get("AUXIPC_KEYS"):
        return Path(os.environ["AUXIPC_KEYS"]).expanduser().absolute()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "auxipc" / "keys"


def key_name() -> str:
    """The pair a peer on this host uses."""
    return os.environ.get("AUXIPC_KEY_NAME") or socket.gethostname()


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or name == AUTHORIZED:
        raise AuxError(Errno.EINVAL, f"key name {name!r}: use letters, digits, '-', '_' or '.'")


def create(name: str, path=None) -> Path:
    """A new pair ``NAME.key``/``NAME.key_secret``; never overwrites one."""
    import zmq.auth
    _check_name(name)
    d = key_dir(path)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    (d / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
    if (d / f"{name}.key").exists() or (d / f"{name}.key_secret").exists():
        raise AuxError(Errno.EEXIST, f"key {name!r} already exists in {d}; delete it first to replace it")
    old = os.umask(0o077)       # the secret file is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    return Path(public)


def admit(public_file: str | os.PathLike, path=None, name: str | None = None) -> Path:
    """Copy a public key into ``authorized/`` (checked to be one)."""
    src = Path(public_file)
    _load(src, secret=False)
    d = key_dir(path) / AUTHORIZED
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    dst = d / f"{name or src.stem}.key"
    shutil.copyfile(src, dst)
    return dst


def revoke(name: str, path=None) -> None:
    target = key_dir(path) / AUTHORIZED / f"{name}.key"
    if not target.exists():
        raise AuxError(Errno.ENOENT, f"no admitted key {name!r} in {target.parent}")
    target.unlink()


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth
    try:
        public, sec = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise AuxError(Errno.ENOENT if isinstance(exc, FileNotFoundError) else Errno.EINVAL,
                       f"cannot read CURVE key {path}: {exc}") from None
    if secret and not sec:
        raise AuxError(Errno.EINVAL, f"{path} holds no secret key")
    return public, sec


def client_keys(path=None) -> tuple[bytes, bytes, bytes]:
    """(public, secret, broker public) for a peer; a missing file says what to run."""
    d = key_dir(path)
    name = key_name()
    mine, broker = d / f"{name}.key_secret", d / f"{BROKER}.key"
    if not mine.exists():
        raise AuxError(Errno.ENOENT, f"no key pair {name!r} in {d}: create it with 'auxipc keys create {name}' "
                       "and admit its .key on the broker host (or set AUXIPC_KEY_NAME / --keys)")
    if not broker.exists():
        raise AuxError(Errno.ENOENT, f"no broker public key {broker}: copy broker.key from the broker host's key dir")
    public, secret = _load(mine, secret=True)
    server, _ = _load(broker, secret=False)
    return public, secret, server


def server_keys(path=None) -> tuple[bytes, bytes]:
    d = key_dir(path)
    mine = d / f"{BROKER}.key_secret"
    if not mine.exists():
        raise AuxError(Errno.ENOENT, f"no broker key pair in {d}: create it with 'auxipc keys create broker' "
                       "(or listen with --insecure)")
    public, secret = _load(mine, secret=True)
    return public, secret


def authorized(path=None) -> dict[bytes, str]:
    """Admitted public key (z85) -> its file's name."""
    d = key_dir(path) / AUTHORIZED
    out = {}
    for f in sorted(d.glob("*.key")) if d.is_dir() else ():
        try:
            out[_load(f, secret=False)[0]] = f.stem
        except AuxError:
            continue
    return out


def listing(path=None) -> dict:
    """What ``auxipc keys ls`` shows: the pairs here and the admitted keys."""
    d = key_dir(path)
    pairs = []
    for f in sorted(d.glob("*.key")) if d.is_dir() else ():
        public, _ = _load(f, secret=False)
        pairs.append({"name": f.stem, "public": public.decode(), "secret": (d / f"{f.stem}.key_secret").exists()})
    admitted = [{"name": n, "public": k.decode()} for k, n in authorized(path).items()]
    return {"dir": str(d), "pairs": pairs, "authorized": admitted, "peer_key": key_name()}


# ---- a refused handshake, as a client sees it on its socket monitor ------------------

def handshake_failed_events() -> int:
    """The socket-monitor events of a failed ZMTP/CURVE handshake."""
    import zmq
    return (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def monitor_event(monitor) -> dict:
    from zmq.utils.monitor import parse_monitor_message
    return parse_monitor_message(monitor.recv_multipart())


def refused(where: str, event: dict) -> AuxError:
    """The error a client fails with when the broker at ``where`` refuses its handshake."""
    import zmq
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return AuxError(Errno.EPERM, f"the broker at {where} refused this host's key {key_name()!r} "
                        f"(ZAP {event['value']}); keys in {key_dir()}: admit this host's .key with "
                        "'auxipc keys admit' on the broker host")
    return AuxError(Errno.EPERM, f"the handshake with the broker at {where} failed: a broker.key in "
                    f"{key_dir()} that is not the broker's, or one side --insecure and the other not")
