"""Two Linux network namespaces joined by a veth pair, for tests and benches that
put the broker and its peers on different "hosts" (root and ``ip`` needed).

``a`` gets 10.213.N.1/24 and ``b`` 10.213.N.2/24 (N picked per pair): addresses
that exist only inside these namespaces. ``cut``/``heal`` take the link down and
up (a partition: packets vanish, no connection is reset); ``netem`` adds delay
and loss on both ends. ``close`` deletes both namespaces (and the veth with
them); use the pair as a context manager so that happens in a finally.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed"
    probe = f"axprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")


class NetPair:
    def __init__(self, tag: str = "ax"):
        n = os.getpid() % 250 + 1
        self.a, self.b = f"{tag}a{os.getpid()}", f"{tag}b{os.getpid()}"
        self.va, self.vb = f"{tag}va{n}"[:15], f"{tag}vb{n}"[:15]
        self.addr_a, self.addr_b = f"10.213.{n}.1", f"10.213.{n}.2"
        self.made: list[str] = []

    def __enter__(self) -> NetPair:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        for ns in (self.a, self.b):
            _run("ip", "netns", "add", ns)
            self.made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name", self.vb, "netns", self.b)
        for ns, dev, addr in ((self.a, self.va, self.addr_a), (self.b, self.vb, self.addr_b)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")

    def wrap(self, ns: str) -> list[str]:
        """Prefix a command with this to run it inside ``ns``."""
        return ["ip", "netns", "exec", ns]

    def cut(self) -> None:
        """Partition: the link goes down; nothing crosses, no connection is reset."""
        _run("ip", "-n", self.a, "link", "set", self.va, "down")

    def heal(self) -> None:
        _run("ip", "-n", self.a, "link", "set", self.va, "up")

    def netem(self, delay_ms: float, loss_pct: float) -> None:
        """``delay_ms`` each way (RTT twice that) and ``loss_pct`` % loss, on both ends.
        Raises RuntimeError where the kernel has no netem qdisc (sch_netem)."""
        for ns, dev in ((self.a, self.va), (self.b, self.vb)):
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem",
                 "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")

    def close(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.made = []
