"""What /proc says about a process: the one place auxipc reads it.

``process_start_time`` with the pid identifies a process for good (a reused pid has
another start time); ``gone`` is true for an exited process and for a zombie
not reaped yet; ``tagged`` finds the processes whose environment carries a
variable, which is how ``scripts/test`` finds what its own run left behind
(``python -m auxipc.procfs AUXIPC_TEST_RUN=<tag>`` lists them, exit 1 if any).
"""

from __future__ import annotations

import os
import sys


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (None if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or a zombie not yet reaped)."""
    return process_start_time(pid) is None


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] if it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def tagged(var: str, value: str) -> list[int]:
    """The live processes (of this user) whose environment has ``var=value``."""
    want = f"{var}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env and not gone(int(entry)):
            found.append(int(entry))
    return sorted(found)


def main(argv: list[str]) -> int:
    """``python -m auxipc.procfs VAR=VALUE``: print the processes tagged so; exit 1 if any."""
    if len(argv) != 1 or "=" not in argv[0]:
        print("usage: python -m auxipc.procfs VAR=VALUE", file=sys.stderr)
        return 2
    var, _, value = argv[0].partition("=")
    pids = tagged(var, value)
    for pid in pids:
        print(f"{pid} {' '.join(cmdline(pid))}")
    return 1 if pids else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
